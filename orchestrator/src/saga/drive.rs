//! Driving one saga: call the action at the saga's position, retry it by
//! the policy, then record its outcome and the start of the next action in
//! one fenced write, and move on. The fast path never polls the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::engine::{Engine, Progress, is_outage};
use super::model::{SagaStatus, StepEvent};
use super::view::{SagaView, StepView};
use crate::definition::template::Scope;
use crate::definition::{Action, Definition, Outputs, Position};
use crate::metrics::{AttemptLabels, StepLabels, Stuck};
use crate::store::webhooks::Due;
use crate::store::{self, LogEntry, Transition};

/// The API's view of a saga this process started, kept up as it is written.
pub(super) struct Shown {
    pub(super) steps: Vec<StepView>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
}

/// A saga being driven: where it is and what it needs for its next call.
pub(super) struct Run {
    pub(super) id: String,
    pub(super) definition: Arc<Definition>,
    pub(super) input: Arc<Value>,
    pub(super) position: Position,
    pub(super) version: i64,
    pub(super) outputs: Outputs,
    /// The `seq` of the next log row.
    pub(super) next_seq: i32,
    /// The attempt number of the current action.
    pub(super) attempt: i32,
    /// When the forward steps must have finished, if the saga set one.
    pub(super) deadline: Option<DateTime<Utc>>,
    /// Set when the saga was taken over: what to log about the attempt the
    /// previous owner may have left in flight.
    pub(super) interrupted: Option<Value>,
    /// Kept for a saga started here; a saga taken over is read back instead.
    pub(super) shown: Option<Shown>,
    /// Cancelled when an operator's action here has taken the saga over:
    /// this driver stops at once instead of at its next write.
    pub(super) superseded: CancellationToken,
}

impl Run {
    /// A saga at `position`, its write fence `version`, the next log row
    /// `next_seq` and the current action's attempt `attempt`; nothing
    /// interrupted, no view kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: String,
        definition: Arc<Definition>,
        input: Arc<Value>,
        position: Position,
        version: i64,
        outputs: Outputs,
        next_seq: i32,
        attempt: i32,
        deadline: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            id,
            definition,
            input,
            position,
            version,
            outputs,
            next_seq,
            attempt,
            deadline,
            interrupted: None,
            shown: None,
            superseded: CancellationToken::new(),
        }
    }

    /// What the templates of this saga's calls see.
    fn scope(&self) -> Scope<'_> {
        Scope {
            input: &self.input,
            saga_id: &self.id,
            definition: &self.definition.name,
            version: self.definition.version,
            steps: &self.outputs,
        }
    }

    /// The ended saga as the API shows it, if this driver saw all of it.
    fn ended_view(&mut self) -> Option<Arc<SagaView>> {
        let shown = self.shown.take()?;
        Some(Arc::new(SagaView {
            id: self.id.clone(),
            definition: self.definition.name.to_string(),
            definition_version: self.definition.version,
            status: self.position.status(),
            input: Value::clone(&self.input),
            outputs: Value::Object(std::mem::take(&mut self.outputs)),
            steps: shown.steps,
            created_at: shown.created_at,
            updated_at: shown.updated_at,
        }))
    }
}

/// Why driving stopped before the saga ended.
pub(super) enum Stop {
    /// The process is shutting down; the saga resumes elsewhere or later.
    Shutdown,
    /// Another process owns the saga now.
    Fenced,
    /// The database refused the write for good (a bug, not an outage).
    Failed(String),
}

impl Engine {
    pub(super) async fn drive(
        &self,
        mut run: Run,
        progress: &watch::Sender<Progress>,
    ) -> Result<SagaStatus, Stop> {
        // The actions are borrowed from this handle, not from `run`, which
        // each write updates.
        let definition = Arc::clone(&run.definition);
        let steps = &definition.steps;
        let mut driven = self
            .metrics
            .driving(&definition.name, run.position.status().as_str());
        if let Some(detail) = run.interrupted.take()
            && let Some(action) = run.position.action(steps)
        {
            self.log_retry(&mut run, action, detail).await?;
            run.attempt += 1;
        }
        while let Some(action) = run.position.action(steps) {
            let forward = matches!(run.position, Position::Forward(_));
            let outcome = self.attempt_until_done(&mut run, action, forward).await?;
            let succeeded = outcome.is_ok();
            let next = run.position.next(steps, succeeded);
            // A forward step's answer is logged and kept for later steps.
            let (event, detail, output) = match outcome {
                Ok(answer) if forward => (StepEvent::Succeeded, answer.clone(), Some(answer)),
                Ok(answer) => (StepEvent::Succeeded, answer, None),
                Err(detail) => (StepEvent::Failed, detail, None),
            };
            let mut log = vec![LogEntry {
                seq: run.next_seq,
                step: Arc::clone(&action.step),
                event,
                attempt: run.attempt,
                detail,
            }];
            if let Some(next_action) = next.action(steps) {
                log.push(LogEntry {
                    seq: run.next_seq + 1,
                    step: Arc::clone(&next_action.step),
                    event: StepEvent::Started,
                    attempt: 1,
                    detail: json!({ "idempotency_key": format!("{}:{}", run.id, next_action.step) }),
                });
            }
            let logged = i32::try_from(log.len()).unwrap_or(i32::MAX);
            let deliveries = self.record(&mut run, next, log).await?;
            if let Some(answer) = output {
                run.outputs.insert(action.step.to_string(), answer);
            }
            run.version += 1;
            run.next_seq += logged;
            run.position = next;
            run.attempt = 1;
            let status = next.status();
            if !status.is_terminal() {
                driven.set(status.as_str());
            }
            let ended = if status.is_terminal() {
                run.ended_view()
            } else {
                None
            };
            self.hand_offs
                .send(deliveries, ended.clone(), &run.definition);
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
        action: &Action,
        forward: bool,
    ) -> Result<Result<Value, Value>, Stop> {
        let mut attempts = match (forward, action.max_attempts) {
            (false, _) => self.compensation.attempts(),
            (true, None) => self.forward.attempts(),
            (true, Some(max)) => self.forward.with_max_attempts(max).attempts(),
        };
        // Only forward steps race the saga's deadline: once it has passed,
        // the saga compensates instead of going on.
        let deadline = run.deadline.filter(|_| forward);
        let (definition_name, step_name) =
            (run.definition.name.to_string(), action.step.to_string());
        let labels = |outcome| AttemptLabels {
            definition: definition_name.clone(),
            step: step_name.clone(),
            outcome,
        };
        // A compensation failing for longer than STUCK_AFTER_SECS counts as
        // stuck until it ends.
        let mut failing_since = None;
        let mut stuck = None;
        let remaining = || deadline.map(|at| (at - Utc::now()).to_std().unwrap_or_default());
        // Whether the next attempt is a retry: a retry waits for the
        // participant's retry budget; a first attempt (or a taken-over
        // saga's next one) adds to it.
        let mut retry = false;
        let superseded = run.superseded.clone();
        loop {
            if remaining() == Some(Duration::ZERO) {
                return Ok(Err(deadline_passed(run, action, None)));
            }
            if retry {
                let budget = self.participants.retry_budget(&action.participant);
                if self
                    .wait_logged(run, action, budget, BUDGET_WAIT, remaining, &superseded)
                    .await?
                    .is_none()
                {
                    return Ok(Err(deadline_passed(run, action, None)));
                }
            } else {
                self.participants.first_attempt(&action.participant);
            }
            // Wait for a turn, keeping one's place in line.
            let turn = self.participants.turn(&action.participant);
            let Some(turn) = self
                .wait_logged(run, action, turn, TURN_WAIT, remaining, &superseded)
                .await?
            else {
                return Ok(Err(deadline_passed(run, action, None)));
            };
            let scope = run.scope();
            let began = std::time::Instant::now();
            // One span per attempt, named by its step: its `traceparent`
            // goes with the call.
            let attempt_span = tracing::info_span!(
                "attempt",
                otel.name = &*action.step,
                otel.kind = "client",
                step = &*action.step,
                attempt = run.attempt,
            );
            let call = self
                .participants
                .call(action, &scope, turn)
                .instrument(attempt_span);
            let result = tokio::select! {
                result = call => result,
                () = sleep_or_forever(remaining()) => return Ok(Err(deadline_passed(run, action, None))),
                stop = self.stopping(&superseded) => return Err(stop),
            };
            let took = began.elapsed().as_secs_f64();
            let failure = match result {
                Ok(answer) => {
                    self.metrics
                        .attempts
                        .get_or_create(&labels("succeeded"))
                        .observe(took);
                    if !forward {
                        self.metrics
                            .compensations
                            .get_or_create(&step_labels(run, action))
                            .inc();
                    }
                    return Ok(Ok(answer));
                }
                Err(failure) => failure,
            };
            // A forward step's business failure is final; a compensation
            // cannot fail for business reasons, so it is retried whatever
            // the answer.
            let Some(delay) = attempts.after_failure(failure.transient) else {
                self.metrics
                    .attempts
                    .get_or_create(&labels("failed"))
                    .observe(took);
                return Ok(Err(failure.detail));
            };
            self.metrics
                .attempts
                .get_or_create(&labels("transient"))
                .observe(took);
            self.metrics
                .retries
                .get_or_create(&step_labels(run, action))
                .inc();
            if !forward && stuck.is_none() {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= self.metrics.stuck_after {
                    tracing::warn!(saga_id = %run.id, step = %action.step, "compensation stuck (failing for longer than STUCK_AFTER_SECS)");
                    stuck = Some(Stuck::new(&self.metrics, step_labels(run, action)));
                    self.notify_stuck(&run.id).await;
                }
            }
            if deadline.is_some_and(|at| Utc::now() + delay >= at) {
                return Ok(Err(deadline_passed(run, action, Some(failure.detail))));
            }
            tracing::warn!(
                saga_id = %run.id,
                step = %action.step,
                attempt = run.attempt,
                ?delay,
                detail = %failure.detail,
                "attempt failed, will retry"
            );
            self.log_retry(run, action, failure.detail).await?;
            run.attempt += 1;
            retry = true;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                stop = self.stopping(&superseded) => return Err(stop),
            }
        }
    }

    /// Enqueues the webhooks of a stuck compensation. Best effort: a saga
    /// is not held up by it, and an outage is logged.
    async fn notify_stuck(&self, saga_id: &str) {
        let kind = crate::webhooks::STUCK;
        let enqueued = self
            .bounded(async |conn| store::webhooks::enqueue(conn, saga_id, kind).await)
            .await;
        if let Err(err) = enqueued {
            tracing::warn!(%err, "cannot enqueue the stuck compensation's webhooks");
        }
    }

    /// Resolves when this driver must stop: the process is stopping, or an
    /// operator's action has taken the saga over.
    async fn stopping(&self, superseded: &CancellationToken) -> Stop {
        tokio::select! {
            () = self.shutdown.cancelled() => Stop::Shutdown,
            () = superseded.cancelled() => Stop::Fenced,
        }
    }

    /// Waits for `ready` (a turn, or the retry budget) keeping the saga's
    /// place. A wait is not an attempt: however long, it spends none. Each
    /// time it runs past an attempt's time it is logged with `why`, which
    /// renews the saga's lease. `None` when the saga's deadline passes first.
    async fn wait_logged<T>(
        &self,
        run: &mut Run,
        action: &Action,
        ready: impl Future<Output = T>,
        why: &str,
        remaining: impl Fn() -> Option<Duration>,
        superseded: &CancellationToken,
    ) -> Result<Option<T>, Stop> {
        let mut ready = std::pin::pin!(ready);
        loop {
            tokio::select! {
                ready = &mut ready => return Ok(Some(ready)),
                () = tokio::time::sleep(self.participants.queue_timeout()) => {
                    let waited = json!({ "error": "queue wait", "message": why });
                    self.log_retry(run, action, waited).await?;
                }
                () = sleep_or_forever(remaining()) => return Ok(None),
                stop = self.stopping(superseded) => return Err(stop),
            }
        }
    }

    /// Logs a `retrying` row for the step being tried (its attempt number
    /// unchanged), renewing the saga's lease.
    pub(super) async fn log_retry(
        &self,
        run: &mut Run,
        action: &Action,
        detail: Value,
    ) -> Result<(), Stop> {
        let log = [LogEntry {
            seq: run.next_seq,
            step: Arc::clone(&action.step),
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
    /// and adds it to the saga's view when one is kept. Returns the webhook
    /// deliveries it enqueued (a saga's end), claimed for this process.
    async fn record(
        &self,
        run: &mut Run,
        position: Position,
        log: Vec<LogEntry>,
    ) -> Result<Vec<Due>, Stop> {
        let transition = Arc::new(Transition {
            saga_id: run.id.clone(),
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
        let (at, deliveries) = match written {
            Some(made) => (made.at, made.deliveries),
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
                // much (docs/benchmarks.md has the figures).
                let checked = tokio::select! {
                    checked = Box::pin(check) => checked,
                    () = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                };
                // Its deliveries, if any, go when their claim runs out.
                match checked {
                    Ok(Some(at)) => (at, Vec::new()),
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
                    &entry.step,
                    entry.event,
                    entry.attempt,
                    &entry.detail,
                    at,
                );
            }
            shown.updated_at = at;
        }
        Ok(deliveries)
    }
}

/// What a saga waiting for a turn records, once per attempt's time.
const TURN_WAIT: &str = "waiting for a turn (PARTICIPANT_MAX_IN_FLIGHT calls in flight to this participant); still in line";
/// What a retry waiting for its participant's retry budget records.
const BUDGET_WAIT: &str = "waiting for the participant's retry budget (RETRY_BUDGET_PERCENT of its first attempts, RETRY_BUDGET_MIN_PER_SEC at least); still in line";

/// How a saga's write (or the check of one) is retried through a database
/// outage: with capped backoff, for as long as it lasts.
pub(super) fn until_the_database_is_back() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// The labels of `action`'s series.
fn step_labels(run: &Run, action: &Action) -> StepLabels {
    StepLabels {
        definition: run.definition.name.to_string(),
        step: action.step.to_string(),
    }
}

/// What a forward step records when the saga's deadline stops it.
fn deadline_passed(run: &Run, action: &Action, last: Option<Value>) -> Value {
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
