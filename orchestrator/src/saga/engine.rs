//! The engine: knows the definitions, starts sagas, drives each one in a
//! task of its own, and wakes the requests waiting for them.
//!
//! A start never depends on the request that asked for it: the create and
//! the driving run in the engine's own task, and the request only waits for
//! the answer. A client that hangs up (a timeout, a proxy giving up) leaves
//! its saga driven all the same, at once, not once its lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::admission::{Admission, Limits, Overloaded, Slot};
use super::drive::{Run, Shown, Stop};
use super::model::{SagaStatus, StepEvent};
use super::view::{SagaView, StepView};
use super::writer::{WriteError, Writer};
use crate::definition::registry::Registry;
use crate::definition::validate::{self, Checks, Compiled};
use crate::definition::{Definition, Diagnostic, Document, Outputs, Position};
use crate::metrics::{DefinitionLabels, OutcomeLabels, SagaMetrics};
use crate::participants::Participants;
use crate::retry::{RetryConfig, RetryPolicy};
use crate::store::definitions::Registered;
use crate::store::{self, NewSaga};
use crate::webhooks::{HandOff, HandOffs};
pub use common::db::is_outage;

/// What the engine needs, fixed at start-up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This process's identity, the owner name of its leases.
    pub owner: String,
    /// How long a lease lasts without a write.
    pub lease: Duration,
    pub retry: RetryConfig,
    pub limits: Limits,
    /// How long the webhook deliveries of a saga's end are claimed for the
    /// delivery worker here, which is handed them at once.
    pub webhook_claim: Duration,
}

/// Starts and drives sagas; shared by the HTTP handlers.
#[derive(Debug)]
pub struct Engine {
    pub(super) pool: PgPool,
    pub(super) participants: Participants,
    pub(super) owner: String,
    pub(super) lease_secs: f64,
    /// How long a query may go unanswered before it is given up as an
    /// outage (sqlx has no timeout of its own).
    db_timeout: Duration,
    pub(super) retry: RetryConfig,
    pub(super) forward: RetryPolicy,
    pub(super) compensation: RetryPolicy,
    /// The longest attempt timeout a step may set: two attempts (a wait for
    /// a turn, then the call) and the longest delay must fit in the lease.
    max_step_timeout: Duration,
    definitions: Registry,
    /// Every saga this process drives: its progress, for waiting requests,
    /// and the token that stops its driver when an action takes it over.
    running: Mutex<HashMap<String, Tracked>>,
    /// Every transition goes through this one batching writer.
    pub(super) writer: Writer,
    /// The slots of the sagas driven here.
    pub(super) admission: Arc<Admission>,
    pub(super) metrics: SagaMetrics,
    /// Where a driver hands the webhook deliveries of its saga's end.
    pub(super) hand_offs: HandOffs,
    pub(super) tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

/// A saga driven here.
#[derive(Debug)]
struct Tracked {
    progress: watch::Receiver<Progress>,
    superseded: CancellationToken,
}

/// The span of one saga's driving: every log line about the saga carries
/// its id, definition and (when traces are on) trace id. With no `parent`
/// it starts a trace of its own.
fn saga_span(parent: Option<tracing::Id>, saga_id: &str, definition: &str) -> tracing::Span {
    let span = tracing::info_span!(
        parent: parent,
        "saga",
        otel.name = %format_args!("saga {definition}"),
        saga_id,
        definition,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace_id) = common::telemetry::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    span
}

/// What a request waiting for a saga driven here sees.
#[derive(Debug, Clone)]
pub(super) struct Progress {
    pub(super) status: SagaStatus,
    /// Once the saga has ended: the saga as the API shows it, when this
    /// driver saw all of it (it started the saga), so that the waiting
    /// request answers without reading it back.
    pub(super) ended: Option<Arc<SagaView>>,
}

/// A saga to start.
#[derive(Debug)]
pub struct Start {
    pub definition: Arc<Definition>,
    pub id: String,
    /// The input, the definition's defaults filled in
    /// ([`Definition::prepare_input`]).
    pub input: Arc<Value>,
    pub deadline: Option<DateTime<Utc>>,
}

/// Why a definition was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The document has errors: the diagnostics say which.
    #[error("the definition has errors")]
    Invalid(Vec<Diagnostic>),
    /// The version exists with other content.
    #[error(
        "{name} version {version} is registered with digest {existing}; this document's is {digest}. Versions never change: give this one a new version"
    )]
    Conflict {
        name: String,
        version: i32,
        existing: String,
        digest: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Engine {
    pub fn new(
        pool: PgPool,
        participants: Participants,
        config: &EngineConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        // A query left unanswered for a third of the lease is given up and
        // retried on another connection. No lease is renewed while the
        // database does not answer, whatever the limit; once one has run
        // out, the fence keeps a takeover safe.
        let db_timeout = config.lease / 3;
        let metrics = SagaMetrics::new(Duration::from_secs(config.retry.stuck_after_secs));
        let writer = Writer::start(
            pool.clone(),
            config.owner.clone(),
            config.lease.as_secs_f64(),
            config.webhook_claim.as_secs_f64(),
            db_timeout,
            metrics.writer.clone(),
        );
        let longest_delay = Duration::from_millis(
            config
                .retry
                .retry_max_delay_ms
                .max(config.retry.compensation_max_delay_ms),
        );
        Arc::new(Self {
            writer,
            admission: Arc::new(Admission::new(config.limits.clone())),
            metrics,
            hand_offs: HandOffs::new(),
            pool,
            participants,
            owner: config.owner.clone(),
            lease_secs: config.lease.as_secs_f64(),
            db_timeout,
            retry: config.retry.clone(),
            forward: config.retry.forward(),
            compensation: config.retry.compensation(),
            max_step_timeout: config.lease.saturating_sub(longest_delay) / 2,
            definitions: Registry::default(),
            running: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Cancelled when this process starts stopping: what streams to a
    /// client ends then, so that it does not hold the stop up.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// This process's identity, the owner of its leases and claims.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Adds the engine's metrics (its sagas, steps, writer, recovery and
    /// slots) to `registry`.
    pub fn register_metrics(&self, registry: &mut common::metrics::Registry) {
        self.metrics.register(registry);
        registry.register_collector(Box::new(Arc::clone(&self.admission)));
    }

    /// The deliveries handed over by the drivers here, for the one worker
    /// that sends them; `None` once taken.
    pub fn take_hand_offs(&self) -> Option<mpsc::Receiver<HandOff>> {
        self.hand_offs.take()
    }

    pub fn participants(&self) -> &Participants {
        &self.participants
    }

    pub fn retry(&self) -> &RetryConfig {
        &self.retry
    }

    /// A slot to drive a new saga in, or why there is none
    /// ([`Admission::admit`]).
    pub async fn admit(&self) -> Result<Slot, Overloaded> {
        self.admission.admit().await
    }

    /// Takes one of `client`'s starts ([`Admission::check_rate`]).
    pub fn check_start_rate(
        &self,
        client: std::net::IpAddr,
    ) -> Result<(), crate::saga::admission::TooManyStarts> {
        self.admission.check_rate(client)
    }

    /// Whether the saga `saga_id` is driven by this process now.
    pub fn is_driving(&self, saga_id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(saga_id)
    }

    /// How long a query may go unanswered before it is given up as an
    /// outage: a third of the lease.
    pub fn db_timeout(&self) -> Duration {
        self.db_timeout
    }

    /// Runs a query on a connection of the pool, given up as an outage (and
    /// its connection closed) when the database leaves it unanswered for a
    /// third of the lease: see [`common::db::bounded`]. The claims, the
    /// check of a retried write and the API's reads go through this.
    pub async fn bounded<T>(
        &self,
        query: impl AsyncFnOnce(&mut sqlx::PgConnection) -> sqlx::Result<T>,
    ) -> sqlx::Result<T> {
        common::db::bounded(&self.pool, self.db_timeout, query).await
    }

    /// The checks a definition registered here passes, beyond its own: its
    /// participants have URLs, its timeouts fit in the lease.
    pub fn checks(&self) -> Checks {
        Checks {
            configured: Some(self.participants.names()),
            max_timeout: Some(self.max_step_timeout),
        }
    }

    /// Checks `doc` and registers it: stored in `orchestrator.definitions`
    /// (unless the same content is there already) and compiled here. Every
    /// replica that has not seen it loads it from the table when it needs it.
    pub async fn register(
        &self,
        doc: Document,
    ) -> Result<(Arc<Definition>, Registered, Vec<Diagnostic>), RegisterError> {
        let Compiled {
            definition,
            diagnostics,
        } = validate::compile(doc, &self.checks());
        let Some(definition) = definition else {
            return Err(RegisterError::Invalid(diagnostics));
        };
        let registered = self
            .bounded(async |conn| {
                store::definitions::register(
                    conn,
                    &definition.name,
                    definition.version,
                    &definition.digest,
                    &definition.document.to_json(),
                )
                .await
            })
            .await?;
        if let Registered::Conflict { existing } = registered {
            return Err(RegisterError::Conflict {
                name: definition.name.to_string(),
                version: definition.version,
                existing,
                digest: definition.digest,
            });
        }
        let definition = self.definitions.insert(Arc::new(definition));
        Ok((definition, registered, diagnostics))
    }

    /// Version `version` of `name` (the newest this process knows when
    /// None), loaded from the table when it was registered elsewhere.
    pub async fn definition(
        &self,
        name: &str,
        version: Option<i32>,
    ) -> sqlx::Result<Option<Arc<Definition>>> {
        let known = match version {
            Some(version) => self.definitions.get(name, version),
            None => self.definitions.latest(name),
        };
        if known.is_some() {
            return Ok(known);
        }
        let Some(record) = self
            .bounded(async |conn| store::definitions::find(conn, name, version).await)
            .await?
        else {
            return Ok(None);
        };
        Ok(self.compile_stored(record))
    }

    /// Compiles a definition read from the table. It passed every check when
    /// it was registered; here it is checked only as a document, so that a
    /// saga in flight is driven whatever this replica's settings.
    fn compile_stored(
        &self,
        record: store::definitions::DefinitionRecord,
    ) -> Option<Arc<Definition>> {
        let (name, version) = (record.name.clone(), record.version);
        let compiled = serde_json::from_value::<Document>(record.document)
            .map_err(|err| err.to_string())
            .and_then(|doc| {
                let compiled = validate::compile(doc, &Checks::default());
                compiled
                    .definition
                    .ok_or_else(|| format!("{:?}", compiled.diagnostics))
            });
        match compiled {
            Ok(definition) => Some(self.definitions.insert(Arc::new(definition))),
            Err(err) => {
                tracing::error!(%name, version, %err, "a stored definition does not compile");
                None
            }
        }
    }

    /// Loads the newest version of every definition that another replica
    /// registered since this one last looked.
    pub async fn refresh_definitions(&self) -> sqlx::Result<()> {
        let latest = self
            .bounded(async |conn| store::definitions::latest(conn).await)
            .await?;
        let known = self.definitions.latest_versions();
        for (name, version) in latest {
            if known.get(name.as_str()).is_none_or(|&v| v < version) {
                self.definition(&name, Some(version)).await?;
            }
        }
        Ok(())
    }

    /// Records `start` and drives it at once in `slot`, in the engine's own
    /// task: the request that asked may go away at any point. Returns
    /// `false` (and starts nothing) if a saga of that id exists already.
    pub async fn start(self: &Arc<Self>, start: Start, slot: Slot) -> Result<bool, WriteError> {
        let Start {
            definition,
            id,
            input,
            deadline,
        } = start;
        let Some(first) = definition.steps.first() else {
            return Ok(false);
        };
        let first_step = Arc::clone(&first.forward.step);
        let new = NewSaga {
            saga_id: id,
            definition: Arc::clone(&definition.name),
            version: definition.version,
            input,
            first_step,
            deadline,
        };
        let (reply, answer) = oneshot::channel();
        let engine = Arc::clone(self);
        // A child of the request's span: the saga continues the trace its
        // start was sent in, if any.
        let span = saga_span(
            tracing::Span::current().id(),
            &new.saga_id,
            &definition.name,
        );
        let started = async move {
            let _slot = slot;
            let saga_id = new.saga_id.clone();
            let input = Arc::clone(&new.input);
            let at = match engine.writer.create(new).await {
                Ok(Some(made)) => made.at,
                other => {
                    let _ = reply.send(other.map(|_| false));
                    return;
                }
            };
            engine
                .metrics
                .started
                .get_or_create(&DefinitionLabels {
                    definition: definition.name.to_string(),
                })
                .inc();
            let first_step = definition.steps[0].forward.step.to_string();
            let mut shown_steps = Vec::new();
            StepView::fold(
                &mut shown_steps,
                &first_step,
                StepEvent::Started,
                1,
                &json!({ "idempotency_key": format!("{saga_id}:{first_step}") }),
                at,
            );
            let mut run = Run::new(
                saga_id,
                definition,
                input,
                Position::Forward(0),
                0,
                Outputs::new(),
                2,
                1,
                deadline,
            );
            run.shown = Some(Shown {
                steps: shown_steps,
                created_at: at,
                updated_at: at,
            });
            let (tx, rx) = engine.track(&run);
            let _ = reply.send(Ok(true));
            engine.drive_tracked(run, tx, rx).await;
        };
        self.tasks.spawn(started.instrument(span));
        answer.await.map_err(|_| WriteError {
            outage: false,
            message: "the engine stopped before the saga was recorded".into(),
        })?
    }

    /// Drives `run` in a task of its own, in `slot`.
    pub(super) fn spawn(self: &Arc<Self>, run: Run, slot: Slot) {
        let (tx, rx) = self.track(&run);
        let engine = Arc::clone(self);
        // A saga taken over starts a trace of its own.
        let span = saga_span(None, &run.id, &run.definition.name);
        self.tasks.spawn(
            async move {
                let _slot = slot;
                engine.drive_tracked(run, tx, rx).await
            }
            .instrument(span),
        );
    }

    /// Makes `run`'s progress visible to the requests that wait for it.
    fn track(&self, run: &Run) -> (watch::Sender<Progress>, watch::Receiver<Progress>) {
        let (tx, rx) = watch::channel(Progress {
            status: run.position.status(),
            ended: None,
        });
        let tracked = Tracked {
            progress: rx.clone(),
            superseded: run.superseded.clone(),
        };
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(run.id.clone(), tracked);
        (tx, rx)
    }

    /// Stops the driver here of the saga `saga_id`, if there is one: an
    /// operator's action has taken the saga over.
    pub(super) fn supersede(&self, saga_id: &str) {
        let tracked = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(saga_id);
        if let Some(tracked) = tracked {
            tracked.superseded.cancel();
        }
    }

    async fn drive_tracked(
        &self,
        run: Run,
        tx: watch::Sender<Progress>,
        rx: watch::Receiver<Progress>,
    ) {
        let saga_id = run.id.clone();
        let definition = run.definition.name.to_string();
        match self.drive(run, &tx).await {
            Ok(status) => {
                self.metrics
                    .ended
                    .get_or_create(&OutcomeLabels {
                        definition,
                        outcome: status.as_str(),
                    })
                    .inc();
                tracing::info!(%saga_id, status = status.as_str(), "saga ended")
            }
            Err(Stop::Shutdown) => {
                tracing::info!(%saga_id, "saga left for recovery at shutdown")
            }
            Err(Stop::Fenced) => {
                tracing::warn!(%saga_id, "saga taken over (by another process, or an operator's action)")
            }
            Err(Stop::Failed(err)) => {
                tracing::error!(%saga_id, %err, "cannot record the saga; left for recovery")
            }
        }
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only this driver's entry: a later driver may have replaced it.
        if running
            .get(&saga_id)
            .is_some_and(|entry| entry.progress.same_channel(&rx))
        {
            running.remove(&saga_id);
        }
    }

    /// Waits until the saga `saga_id` has ended, `wait` has passed, or the
    /// process is stopping, whichever comes first. Answers the ended saga
    /// when its driver here saw all of it; read it back otherwise.
    pub async fn wait_for_end(
        &self,
        saga_id: &str,
        wait: Duration,
    ) -> sqlx::Result<Option<Arc<SagaView>>> {
        let deadline = Instant::now() + wait;
        loop {
            let local = self
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(saga_id)
                .map(|tracked| tracked.progress.clone());
            if let Some(mut rx) = local {
                tokio::select! {
                    ended = rx.wait_for(|progress| progress.status.is_terminal()) => {
                        // The driver stopped without ending the saga (fenced
                        // or shutting down): look at the row instead.
                        if let Ok(progress) = ended {
                            return Ok(progress.ended.clone());
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => return Ok(None),
                    () = self.shutdown.cancelled() => return Ok(None),
                }
            }
            // Not driven here: read the row until it ends.
            let ended = self
                .bounded(async |conn| store::find(conn, saga_id).await)
                .await?
                .is_none_or(|saga| saga.status.is_terminal());
            if ended || Instant::now() >= deadline || self.shutdown.is_cancelled() {
                return Ok(None);
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(100)))
                .await;
        }
    }

    /// Stops driving (sagas stay where they are, for recovery) and waits for
    /// every task to finish, then, if `hand_back`, gives this process's
    /// leases back so that another process takes the sagas over at once.
    pub async fn stop(&self, hand_back: bool) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(writer) = self.writer.take_task() {
            writer.abort();
            let _ = writer.await;
        }
        if !hand_back {
            return;
        }
        match store::release_leases(&self.pool, &self.owner).await {
            Ok(n) => tracing::info!(released = n, "leases handed back"),
            Err(err) => tracing::warn!(%err, "cannot hand leases back; they will expire"),
        }
    }
}
