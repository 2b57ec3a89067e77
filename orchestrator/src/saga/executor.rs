//! The engine: starts sagas, drives each one in a task of its own, and wakes
//! the requests waiting for them.
//!
//! Driving a saga is generic: call the action at the saga's position, retry
//! it by the policy, then record its outcome and the start of the next action
//! in one fenced write, and move on. The fast path never polls the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::definition::{Outputs, Position, StepDef, definition};
use super::model::{SagaStatus, StepEvent, Trip};
use super::view::{SagaView, StepView};
use super::writer::{WriteError, Writer};
use crate::participants::Participants;
use crate::retry::{RetryConfig, RetryPolicy};
use crate::store::{self, LogEntry, Transition};
pub use common::db::is_outage;

/// The definition versions this build can resume.
const KNOWN_VERSIONS: &[i32] = &[1];

/// What the engine needs, fixed at start-up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This process's identity, the owner name of its leases.
    pub owner: String,
    /// How long a lease lasts without a write.
    pub lease: Duration,
    pub retry: RetryConfig,
}

/// Starts and drives sagas; shared by the HTTP handlers.
#[derive(Debug)]
pub struct Engine {
    pool: PgPool,
    participants: Participants,
    owner: String,
    lease_secs: f64,
    /// How long a query may go unanswered before it is given up as an
    /// outage (sqlx has no timeout of its own).
    db_timeout: Duration,
    forward: RetryPolicy,
    compensation: RetryPolicy,
    /// The progress of every saga this process drives, for waiting requests.
    running: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    /// Every transition goes through this one batching writer.
    writer: Writer,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// What a request waiting for a saga driven here sees.
#[derive(Debug, Clone)]
struct Progress {
    status: SagaStatus,
    /// Once the saga has ended: the saga as the API shows it, when this
    /// driver saw all of it (it started the saga), so that the waiting
    /// request answers without reading it back.
    ended: Option<Arc<SagaView>>,
}

/// The API's view of a saga this process started, kept up as it is written.
struct Shown {
    steps: Vec<StepView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A saga being driven: where it is and what it needs for its next call.
struct Run {
    trip: Trip,
    definition_version: i32,
    steps: &'static [StepDef],
    position: Position,
    version: i64,
    outputs: Outputs,
    /// The `seq` of the next log row.
    next_seq: i32,
    /// The attempt number of the current action.
    attempt: i32,
    /// When the forward steps must have finished, if the trip set one.
    deadline: Option<DateTime<Utc>>,
    /// Set when the saga was taken over: what to log about the attempt the
    /// previous owner may have left in flight.
    interrupted: Option<Value>,
    /// Kept for a saga started here; a saga taken over is read back instead.
    shown: Option<Shown>,
}

impl Run {
    /// The ended saga as the API shows it, if this driver saw all of it.
    fn ended_view(&mut self) -> Option<Arc<SagaView>> {
        let shown = self.shown.take()?;
        Some(Arc::new(SagaView {
            trip_id: self.trip.trip_id.clone(),
            run_type: self.trip.run_type.as_str().to_owned(),
            status: self.position.status(),
            definition_version: self.definition_version,
            input: serde_json::to_value(&self.trip).ok()?,
            outputs: Value::Object(std::mem::take(&mut self.outputs)),
            steps: shown.steps,
            created_at: shown.created_at,
            updated_at: shown.updated_at,
        }))
    }
}

/// Why driving stopped before the saga ended.
enum Stop {
    /// The process is shutting down; the saga resumes elsewhere or later.
    Shutdown,
    /// Another process owns the saga now.
    Fenced,
    /// The database refused the write for good (a bug, not an outage).
    Failed(String),
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
        let writer = Writer::start(
            pool.clone(),
            config.owner.clone(),
            config.lease.as_secs_f64(),
            db_timeout,
        );
        Arc::new(Self {
            writer,
            pool,
            participants,
            owner: config.owner.clone(),
            lease_secs: config.lease.as_secs_f64(),
            db_timeout,
            forward: config.retry.forward(),
            compensation: config.retry.compensation(),
            running: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
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

    /// Records a new saga for `trip` and starts driving it at once.
    /// Returns `false` (and starts nothing) if the trip has a saga already.
    pub async fn start(self: &Arc<Self>, trip: Trip) -> Result<bool, WriteError> {
        let steps = definition(super::DEFINITION_VERSION).unwrap_or_default();
        let Some(first) = steps.first() else {
            return Ok(false);
        };
        let deadline = trip
            .deadline_secs
            .and_then(|secs| chrono::Duration::try_seconds(i64::try_from(secs).ok()?))
            .map(|secs| Utc::now() + secs);
        let new = store::NewSaga {
            trip: trip.clone(),
            first_step: first.forward.step,
            deadline,
        };
        let Some(at) = self.writer.create(new).await? else {
            return Ok(false);
        };
        let mut shown_steps = Vec::new();
        StepView::fold(
            &mut shown_steps,
            first.forward.step.as_str(),
            StepEvent::Started,
            1,
            &json!({ "idempotency_key": format!("{}:{}", trip.trip_id, first.forward.step) }),
            at,
        );
        let run = Run {
            trip,
            definition_version: super::DEFINITION_VERSION,
            steps,
            position: Position::Forward(0),
            version: 0,
            outputs: Outputs::new(),
            next_seq: 2,
            attempt: 1,
            deadline,
            interrupted: None,
            shown: Some(Shown {
                steps: shown_steps,
                created_at: at,
                updated_at: at,
            }),
        };
        self.spawn(run);
        Ok(true)
    }

    /// Takes over this process's own unfinished sagas, left by a previous
    /// run with the same identity, without waiting for their leases. Call it
    /// once at start-up, before any new saga is started.
    pub async fn reclaim_own(self: &Arc<Self>) -> sqlx::Result<()> {
        // Only the sagas written before now: those this process has just
        // claimed are its own too, and must not be claimed again.
        let started = store::now(&self.pool).await?;
        while self.claim_batch(Some(started)).await? {}
        Ok(())
    }

    /// Every `interval` until shutdown, takes over the sagas whose lease ran
    /// out (their process died or stalled) or was handed back.
    pub async fn recover(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.shutdown.cancelled() => return,
            }
            loop {
                match self.claim_batch(None).await {
                    // A full batch: there may be more, claim again at once.
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => {
                        tracing::warn!(%err, "cannot claim sagas; will retry");
                        break;
                    }
                }
            }
        }
    }

    /// Claims one batch and drives it; `true` if the batch was full. With
    /// `own_before`, this process's own sagas last written before then are
    /// claimed too, whatever their lease.
    async fn claim_batch(
        self: &Arc<Self>,
        own_before: Option<DateTime<Utc>>,
    ) -> sqlx::Result<bool> {
        const BATCH: usize = 500;
        let claimed = self
            .bounded(async |conn| {
                let (owner, lease_secs, limit) = (&self.owner, self.lease_secs, BATCH as i64);
                store::claim(conn, owner, own_before, lease_secs, KNOWN_VERSIONS, limit).await
            })
            .await?;
        let full = claimed.len() == BATCH;
        for saga in claimed {
            let trip_id = saga.trip_id.clone();
            match self.resume(saga) {
                Ok(run) => self.spawn(run),
                Err(err) => tracing::error!(%trip_id, %err, "cannot resume saga"),
            }
        }
        Ok(full)
    }

    fn resume(&self, saga: store::Claimed) -> Result<Run, String> {
        let steps = definition(saga.definition_version)
            .ok_or_else(|| format!("unknown definition version {}", saga.definition_version))?;
        let trip: Trip = serde_json::from_value(saga.input).map_err(|err| err.to_string())?;
        let outputs = match saga.outputs {
            Value::Object(map) => map,
            _ => Outputs::new(),
        };
        // The attempt the previous owner may have sent: the first one if the
        // step had only started, else the one after the last retried.
        let interrupted = match saga.last_event {
            StepEvent::Started => 1,
            _ => saga.last_attempt + 1,
        };
        tracing::info!(
            trip_id = %trip.trip_id,
            previous_owner = saga.previous_owner,
            status = saga.status.as_str(),
            "resuming saga"
        );
        Ok(Run {
            trip,
            definition_version: saga.definition_version,
            steps,
            position: Position::from_row(saga.status, saga.cursor),
            version: saga.version,
            outputs,
            next_seq: saga.last_seq + 1,
            attempt: interrupted,
            deadline: saga.deadline,
            interrupted: Some(json!({
                "error": "interrupted",
                "message": format!(
                    "the process driving this saga ({}) stopped; resumed by {}",
                    saga.previous_owner.as_deref().unwrap_or("none"),
                    self.owner
                ),
            })),
            shown: None,
        })
    }

    fn spawn(self: &Arc<Self>, run: Run) {
        let (tx, rx) = watch::channel(Progress {
            status: run.position.status(),
            ended: None,
        });
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(run.trip.trip_id.clone(), rx.clone());
        let engine = Arc::clone(self);
        self.tasks.spawn(async move {
            let trip_id = run.trip.trip_id.clone();
            match engine.drive(run, &tx).await {
                Ok(status) => tracing::info!(%trip_id, status = status.as_str(), "saga ended"),
                Err(Stop::Shutdown) => {
                    tracing::info!(%trip_id, "saga left for recovery at shutdown")
                }
                Err(Stop::Fenced) => tracing::warn!(%trip_id, "saga taken over by another process"),
                Err(Stop::Failed(err)) => {
                    tracing::error!(%trip_id, %err, "cannot record the saga; left for recovery")
                }
            }
            let mut running = engine
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Only this driver's entry: a later driver may have replaced it.
            if running
                .get(&trip_id)
                .is_some_and(|entry| entry.same_channel(&rx))
            {
                running.remove(&trip_id);
            }
        });
    }

    /// Waits until the saga of `trip_id` has ended, `wait` has passed, or the
    /// process is stopping, whichever comes first. Answers the ended saga
    /// when its driver here saw all of it; read it back otherwise.
    pub async fn wait_for_end(
        &self,
        trip_id: &str,
        wait: Duration,
    ) -> sqlx::Result<Option<Arc<SagaView>>> {
        let deadline = Instant::now() + wait;
        loop {
            let local = self
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(trip_id)
                .cloned();
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
                .bounded(async |conn| store::find(conn, trip_id).await)
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

    async fn drive(
        &self,
        mut run: Run,
        progress: &watch::Sender<Progress>,
    ) -> Result<SagaStatus, Stop> {
        if let Some(detail) = run.interrupted.take()
            && let Some(action) = run.position.action(run.steps)
        {
            self.log_retry(&mut run, action, detail).await?;
            run.attempt += 1;
        }
        while let Some(action) = run.position.action(run.steps) {
            let forward = matches!(run.position, Position::Forward(_));
            let policy = if forward {
                &self.forward
            } else {
                &self.compensation
            };
            let outcome = self
                .attempt_until_done(&mut run, action, forward, policy)
                .await?;
            let succeeded = outcome.is_ok();
            let next = run.position.next(run.steps, succeeded);
            // A forward step's answer is logged and kept for later steps.
            let (event, detail, output) = match outcome {
                Ok(answer) if forward => (StepEvent::Succeeded, answer.clone(), Some(answer)),
                Ok(answer) => (StepEvent::Succeeded, answer, None),
                Err(detail) => (StepEvent::Failed, detail, None),
            };
            let mut log = vec![LogEntry {
                seq: run.next_seq,
                step: action.step,
                event,
                attempt: run.attempt,
                detail,
            }];
            if let Some(next_action) = next.action(run.steps) {
                log.push(LogEntry {
                    seq: run.next_seq + 1,
                    step: next_action.step,
                    event: StepEvent::Started,
                    attempt: 1,
                    detail: json!({ "idempotency_key": format!("{}:{}", run.trip.trip_id, next_action.step) }),
                });
            }
            let logged = i32::try_from(log.len()).unwrap_or(i32::MAX);
            self.record(&mut run, next, log).await?;
            if let Some(answer) = output {
                run.outputs.insert(action.step.as_str().to_owned(), answer);
            }
            run.version += 1;
            run.next_seq += logged;
            run.position = next;
            run.attempt = 1;
            let status = next.status();
            let ended = if status.is_terminal() {
                run.ended_view()
            } else {
                None
            };
            progress.send_replace(Progress { status, ended });
        }
        Ok(run.position.status())
    }

    /// Calls `action` until it succeeds, fails for good, or (forward steps
    /// only) its attempts are spent. Each failed attempt that will be
    /// retried is logged as `retrying`.
    async fn attempt_until_done(
        &self,
        run: &mut Run,
        action: &super::definition::Action,
        forward: bool,
        policy: &RetryPolicy,
    ) -> Result<Result<Value, Value>, Stop> {
        let mut attempts = policy.attempts();
        // Only forward steps race the saga's deadline: once it has passed,
        // the saga compensates instead of going on.
        let deadline = run.deadline.filter(|_| forward);
        let remaining = || deadline.map(|at| (at - Utc::now()).to_std().unwrap_or_default());
        loop {
            if remaining() == Some(Duration::ZERO) {
                return Ok(Err(deadline_passed(run, action, None)));
            }
            // Wait for a turn, keeping one's place in line. A wait is not an
            // attempt: however long the line, it spends none. Each time it
            // runs past an attempt's time it is logged, which renews the
            // saga's lease.
            let mut turn = std::pin::pin!(self.participants.turn(action.participant));
            let turn = loop {
                tokio::select! {
                    turn = &mut turn => break turn,
                    () = tokio::time::sleep(self.participants.queue_timeout()) => {
                        let waited = json!({
                            "error": "queue wait",
                            "message": "waiting for a turn (PARTICIPANT_MAX_IN_FLIGHT calls in flight to this participant); still in line",
                        });
                        self.log_retry(run, action, waited).await?;
                    }
                    () = sleep_or_forever(remaining()) => return Ok(Err(deadline_passed(run, action, None))),
                    () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                }
            };
            let result = tokio::select! {
                result = self.participants.call(action, &run.trip, &run.outputs, turn) => result,
                () = sleep_or_forever(remaining()) => return Ok(Err(deadline_passed(run, action, None))),
                () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
            };
            let failure = match result {
                Ok(answer) => return Ok(Ok(answer)),
                Err(failure) => failure,
            };
            // A forward step's business failure is final; a compensation
            // cannot fail for business reasons, so it is retried whatever
            // the answer.
            let Some(delay) = attempts.after_failure(failure.transient) else {
                return Ok(Err(failure.detail));
            };
            if deadline.is_some_and(|at| Utc::now() + delay >= at) {
                return Ok(Err(deadline_passed(run, action, Some(failure.detail))));
            }
            tracing::warn!(
                trip_id = %run.trip.trip_id,
                step = %action.step,
                attempt = run.attempt,
                ?delay,
                detail = %failure.detail,
                "attempt failed, will retry"
            );
            self.log_retry(run, action, failure.detail).await?;
            run.attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
        }
    }

    /// Logs a `retrying` row for the step being tried (its attempt number
    /// unchanged), renewing the saga's lease.
    async fn log_retry(
        &self,
        run: &mut Run,
        action: &super::definition::Action,
        detail: Value,
    ) -> Result<(), Stop> {
        let log = [LogEntry {
            seq: run.next_seq,
            step: action.step,
            event: StepEvent::Retrying,
            attempt: run.attempt,
            detail,
        }];
        let position = run.position;
        self.record(run, position, log.into()).await?;
        run.version += 1;
        run.next_seq += 1;
        Ok(())
    }

    /// Writes one transition, retrying while the database is unreachable,
    /// and adds it to the saga's view when one is kept.
    async fn record(
        &self,
        run: &mut Run,
        position: Position,
        log: Vec<LogEntry>,
    ) -> Result<(), Stop> {
        let transition = Arc::new(Transition {
            trip_id: run.trip.trip_id.clone(),
            version: run.version,
            position,
            log,
        });
        let retried = AtomicBool::new(false);
        let write = (|| self.writer.write(Arc::clone(&transition)))
            .retry(until_the_database_is_back())
            .when(|err| err.outage)
            .notify(|err, delay| {
                retried.store(true, Ordering::Relaxed);
                tracing::warn!(%err, ?delay, "cannot record a saga step, retrying");
            });
        let written = tokio::select! {
            written = write => written.map_err(|err| Stop::Failed(err.message))?,
            () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        let at = match written {
            Some(at) => at,
            // A write that failed as an outage may have committed all the
            // same (its answer was lost): then its retry is fenced by the
            // write itself. Its first log row tells.
            None if retried.load(Ordering::Relaxed) => {
                let check = (|| {
                    self.bounded(async |conn| {
                        store::was_written(conn, &transition).await
                    })
                })
                    .retry(until_the_database_is_back())
                    .when(is_outage)
                    .notify(|err, delay| {
                        tracing::warn!(%err, ?delay, "cannot check whether a retried write was made, retrying");
                    });
                // Boxed: the check is rare, and its future (a pool acquire
                // among it) would otherwise make every saga's larger by as
                // much: 84 → 172 MB with 10,000 sagas in flight.
                let checked = tokio::select! {
                    checked = Box::pin(check) => checked,
                    () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                };
                match checked {
                    Ok(Some(at)) => at,
                    Ok(None) => return Err(Stop::Fenced),
                    Err(err) => return Err(Stop::Failed(err.to_string())),
                }
            }
            None => return Err(Stop::Fenced),
        };
        if let Some(shown) = &mut run.shown {
            for entry in &transition.log {
                StepView::fold(
                    &mut shown.steps,
                    entry.step.as_str(),
                    entry.event,
                    entry.attempt,
                    &entry.detail,
                    at,
                );
            }
            shown.updated_at = at;
        }
        Ok(())
    }
}

/// How a saga's write (or the check of one) is retried through a database
/// outage: with capped backoff, for as long as it lasts.
fn until_the_database_is_back() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// What a forward step records when the saga's deadline stops it.
fn deadline_passed(run: &Run, action: &super::definition::Action, last: Option<Value>) -> Value {
    json!({
        "error": "deadline",
        "message": format!(
            "the saga's deadline ({}) passes before {} can succeed; compensating",
            run.deadline.map(|at| at.to_rfc3339()).unwrap_or_default(),
            action.step
        ),
        "last_failure": last,
    })
}

/// Sleeps for `duration`, or forever when there is none.
async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
