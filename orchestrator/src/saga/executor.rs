//! The engine: starts sagas, drives each one in a task of its own, and wakes
//! the requests waiting for them.
//!
//! Driving a saga is generic: call the action at the saga's position, retry
//! it by the policy, then record its outcome and the start of the next action
//! in one fenced write, and move on. The fast path never polls the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::definition::{Outputs, Position, StepDef, definition};
use super::model::{SagaStatus, StepEvent, Trip};
use crate::participants::Participants;
use crate::retry::{RetryConfig, RetryPolicy};
use crate::store::{self, LogEntry, Transition};

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
    forward: RetryPolicy,
    compensation: RetryPolicy,
    /// The status of every saga this process drives, for waiting requests.
    running: Mutex<HashMap<String, watch::Receiver<SagaStatus>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A saga being driven: where it is and what it needs for its next call.
struct Run {
    trip: Trip,
    steps: &'static [StepDef],
    position: Position,
    version: i64,
    outputs: Outputs,
    /// The `seq` of the next log row.
    next_seq: i32,
    /// The attempt number of the current action.
    attempt: i32,
}

/// Why driving stopped before the saga ended.
enum Stop {
    /// The process is shutting down; the saga resumes elsewhere or later.
    Shutdown,
    /// Another process owns the saga now.
    Fenced,
    /// The database refused the write for good (a bug, not an outage).
    Failed(sqlx::Error),
}

impl Engine {
    pub fn new(
        pool: PgPool,
        participants: Participants,
        config: &EngineConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            participants,
            owner: config.owner.clone(),
            lease_secs: config.lease.as_secs_f64(),
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

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Records a new saga for `trip` and starts driving it at once.
    /// Returns `false` (and starts nothing) if the trip has a saga already.
    pub async fn start(self: &Arc<Self>, trip: Trip) -> sqlx::Result<bool> {
        let steps = definition(super::DEFINITION_VERSION).unwrap_or_default();
        let Some(first) = steps.first() else {
            return Ok(false);
        };
        if !store::create(
            &self.pool,
            &trip,
            first.forward.step,
            &self.owner,
            self.lease_secs,
        )
        .await?
        {
            return Ok(false);
        }
        let run = Run {
            trip,
            steps,
            position: Position::Forward(0),
            version: 0,
            outputs: Outputs::new(),
            next_seq: 2,
            attempt: 1,
        };
        self.spawn(run);
        Ok(true)
    }

    fn spawn(self: &Arc<Self>, run: Run) {
        let (tx, rx) = watch::channel(run.position.status());
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(run.trip.trip_id.clone(), rx);
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
            engine
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&trip_id);
        });
    }

    /// Waits until the saga of `trip_id` has ended, `wait` has passed, or the
    /// process is stopping, whichever comes first.
    pub async fn wait_for_end(&self, trip_id: &str, wait: Duration) -> sqlx::Result<()> {
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
                    _ = rx.wait_for(|status| status.is_terminal()) => {}
                    () = tokio::time::sleep_until(deadline) => {}
                    () = self.shutdown.cancelled() => {}
                }
                return Ok(());
            }
            // Not driven here: read the row until it ends.
            let ended = store::find(&self.pool, trip_id)
                .await?
                .is_none_or(|saga| saga.status.is_terminal());
            if ended || Instant::now() >= deadline || self.shutdown.is_cancelled() {
                return Ok(());
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(100)))
                .await;
        }
    }

    /// Stops driving (sagas stay where they are, for recovery) and waits for
    /// every task to finish, then hands this process's leases back.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        match store::release_leases(&self.pool, &self.owner).await {
            Ok(n) => tracing::info!(released = n, "leases handed back"),
            Err(err) => tracing::warn!(%err, "cannot hand leases back; they will expire"),
        }
    }

    async fn drive(
        &self,
        mut run: Run,
        status: &watch::Sender<SagaStatus>,
    ) -> Result<SagaStatus, Stop> {
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
            let (event, detail) = match &outcome {
                Ok(answer) => (StepEvent::Succeeded, answer.clone()),
                Err(detail) => (StepEvent::Failed, detail.clone()),
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
            let output = match &outcome {
                Ok(answer) if forward => Some((action.step, answer)),
                _ => None,
            };
            self.record(&run, next, output, &log).await?;
            if let Some((step, answer)) = output {
                run.outputs.insert(step.as_str().to_owned(), answer.clone());
            }
            run.version += 1;
            run.next_seq += i32::try_from(log.len()).unwrap_or(i32::MAX);
            run.position = next;
            run.attempt = 1;
            status.send_replace(next.status());
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
        let mut delays = policy.backoff();
        loop {
            let result = tokio::select! {
                result = self.participants.call(action, &run.trip, &run.outputs) => result,
                () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
            };
            let failure = match result {
                Ok(answer) => return Ok(Ok(answer)),
                Err(failure) => failure,
            };
            // A forward step's business failure is final; a compensation
            // cannot fail for business reasons, so it is retried whatever
            // the answer.
            let delay = if forward && !failure.transient {
                None
            } else {
                delays.next()
            };
            let Some(delay) = delay else {
                return Ok(Err(failure.detail));
            };
            tracing::warn!(
                trip_id = %run.trip.trip_id,
                step = %action.step,
                attempt = run.attempt,
                ?delay,
                detail = %failure.detail,
                "attempt failed, will retry"
            );
            let log = [LogEntry {
                seq: run.next_seq,
                step: action.step,
                event: StepEvent::Retrying,
                attempt: run.attempt,
                detail: failure.detail,
            }];
            self.record(run, run.position, None, &log).await?;
            run.version += 1;
            run.next_seq += 1;
            run.attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
        }
    }

    /// Writes one transition, retrying while the database is unreachable.
    async fn record(
        &self,
        run: &Run,
        position: Position,
        output: Option<(super::Step, &Value)>,
        log: &[LogEntry],
    ) -> Result<(), Stop> {
        let transition = Transition {
            trip_id: &run.trip.trip_id,
            version: run.version,
            position,
            output,
            log,
            lease_secs: self.lease_secs,
        };
        let write = (|| store::transition(&self.pool, &transition))
            .retry(
                ExponentialBuilder::new()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    .without_max_times(),
            )
            .when(is_outage)
            .notify(
                |err, delay| tracing::warn!(%err, ?delay, "cannot record a saga step, retrying"),
            );
        let applied = tokio::select! {
            applied = write => applied.map_err(Stop::Failed)?,
            () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        if applied { Ok(()) } else { Err(Stop::Fenced) }
    }
}

/// Errors that pass when the database comes back: connection trouble, a
/// server shutting down or overloaded, a serialization conflict.
fn is_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}
