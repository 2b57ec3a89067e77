//! An operator's actions on one saga: `retry` (attempt the waiting step
//! now), `resolve` (mark the current compensation done by hand) and `abort`
//! (stop going forward and compensate from here).
//!
//! An action is a takeover of one saga: in one short transaction it locks
//! the saga's row, checks that its state allows the action, writes the
//! action's log rows and the saga's new position, bumps its version and
//! makes this process its owner. Whoever drove the saga before (a task
//! here, another replica) is fenced at its next write; a task here is also
//! stopped at once. This process then drives the saga from its new
//! position. An action racing another action waits on the row lock, then
//! finds the state the first one left.

use std::sync::Arc;

use serde_json::{Value, json};

use super::admission::Overloaded;
use super::drive::Run;
use super::engine::Engine;
use super::model::{SagaStatus, StepEvent};
use crate::definition::{Definition, Outputs, Position};
use crate::metrics::OutcomeLabels;
use crate::store::{self, Claimed, LogEntry, Transition};

/// What an operator asks of a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The step (or compensation) waiting for its next attempt is attempted
    /// now.
    Retry,
    /// The current compensation is marked done by hand (its participant is
    /// gone for good), and the saga goes on compensating.
    Resolve,
    /// A running saga stops going forward and compensates from where it is.
    Abort,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Resolve => "resolve",
            Action::Abort => "abort",
        }
    }
}

/// Who asked, and why: both recorded with the action.
#[derive(Debug, Clone)]
pub struct Request {
    pub action: Action,
    pub reason: String,
    pub actor: String,
}

/// Why an action was not taken. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No saga of that id and definition.
    #[error("{0}")]
    Missing(String),
    /// The saga's state does not allow the action; the message says why and
    /// what would.
    #[error("{0}")]
    Refused(String),
    /// No slot to drive the saga in.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an action writes: the saga's next position and its log rows.
struct Decision {
    position: Position,
    log: Vec<LogEntry>,
    /// The attempt number the driver goes on with.
    attempt: i32,
}

impl Engine {
    /// Takes `request` on the saga `saga_id` of `definition`, then drives
    /// the saga here unless the action ended it.
    pub async fn act(
        self: &Arc<Self>,
        definition: &str,
        saga_id: &str,
        request: &Request,
    ) -> Result<(), ActionError> {
        let missing =
            || ActionError::Missing(format!("no saga {saga_id} of definition {definition}"));
        let saga = self
            .bounded(async |conn| store::find(conn, saga_id).await)
            .await?
            .filter(|saga| saga.definition == definition)
            .ok_or_else(missing)?;
        if saga.status.is_terminal() {
            return Err(ended(saga_id, saga.status, request.action));
        }
        let definition = self
            .definition(&saga.definition, Some(saga.definition_version))
            .await?
            .ok_or_else(|| {
                ActionError::Refused(format!(
                    "saga {saga_id}'s definition {} version {} is not registered here; register it, then act",
                    saga.definition, saga.definition_version
                ))
            })?;
        // A slot first: once the action is written, this process owns the
        // saga and must drive it.
        let slot = self.admit().await?;
        let (owner, lease_secs) = (&self.owner, self.lease_secs);
        let taken = self
            .bounded(async |conn| {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let Some(locked) = store::lock(&mut tx, saga_id).await? else {
                    return Ok(Err(missing()));
                };
                let decision = match decide(&definition, &locked, request) {
                    Ok(decision) => decision,
                    Err(refused) => return Ok(Err(refused)),
                };
                let transition = Transition {
                    saga_id: saga_id.to_owned(),
                    version: locked.version,
                    position: decision.position,
                    log: decision.log,
                };
                let Some((version, _)) =
                    store::take_over(&mut tx, &transition, owner, lease_secs).await?
                else {
                    return Ok(Err(ActionError::Refused(format!(
                        "saga {saga_id} moved while the action was written; send it again"
                    ))));
                };
                tx.commit().await?;
                Ok(Ok((locked, transition, version, decision.attempt)))
            })
            .await?;
        let (locked, transition, version, attempt) = taken?;
        tracing::info!(
            saga_id,
            action = request.action.as_str(),
            actor = request.actor,
            reason = request.reason,
            previous_owner = locked.previous_owner,
            "operator action taken"
        );
        // A driver here stops at once, rather than at its next write.
        self.supersede(saga_id);
        let status = transition.position.status();
        if status.is_terminal() {
            self.metrics
                .ended
                .get_or_create(&OutcomeLabels {
                    definition: definition.name.to_string(),
                    outcome: status.as_str(),
                })
                .inc();
            return Ok(());
        }
        let written = i32::try_from(transition.log.len()).unwrap_or(i32::MAX);
        let run = Run::new(
            saga_id.to_owned(),
            Arc::clone(&definition),
            Arc::new(locked.input),
            transition.position,
            version,
            forward_outputs(&definition, locked.outputs),
            locked.last_seq + written + 1,
            attempt,
            locked.deadline,
        );
        self.spawn(run, slot);
        Ok(())
    }
}

/// The forward steps' answers among a saga's `succeeded` rows.
pub(super) fn forward_outputs(definition: &Definition, outputs: Value) -> Outputs {
    match outputs {
        Value::Object(map) => map
            .into_iter()
            .filter(|(step, _)| definition.is_forward(step))
            .collect(),
        _ => Outputs::new(),
    }
}

/// What `request` writes on the saga `locked`, or why it may not.
fn decide(
    definition: &Definition,
    locked: &Claimed,
    request: &Request,
) -> Result<Decision, ActionError> {
    let id = &locked.saga_id;
    let position = Position::from_row(locked.status, locked.cursor);
    let steps = &definition.steps;
    let (Position::Forward(_) | Position::Compensating(_)) = position else {
        return Err(ended(id, locked.status, request.action));
    };
    let Some(current) = position.action(steps) else {
        return Err(ActionError::Refused(format!(
            "saga {id} is at no step of its definition; nothing to {}",
            request.action.as_str()
        )));
    };
    let step = Arc::clone(&current.step);
    let detail = |message: String| {
        json!({
            "action": request.action.as_str(),
            "reason": request.reason,
            "actor": request.actor,
            "message": message,
        })
    };
    let row = |event, detail| LogEntry {
        seq: locked.last_seq + 1,
        step: Arc::clone(&step),
        event,
        attempt: locked.last_attempt,
        detail,
    };
    match request.action {
        Action::Retry => {
            if locked.last_event != StepEvent::Retrying {
                return Err(ActionError::Refused(format!(
                    "{step} of saga {id} has not failed an attempt yet: its first attempt is under way. Retry is for a step waiting for its next attempt"
                )));
            }
            let message = format!("{step} is attempted now, by hand");
            Ok(Decision {
                position,
                log: vec![row(StepEvent::Retrying, detail(message))],
                attempt: locked.last_attempt + 1,
            })
        }
        Action::Resolve => {
            if !matches!(position, Position::Compensating(_)) {
                return Err(ActionError::Refused(format!(
                    "saga {id} is running forward ({step}); resolve marks a compensation done by hand. Abort it first to compensate"
                )));
            }
            let message = format!("{step} marked done by hand; not called again");
            Ok(moved_on(
                steps,
                position,
                true,
                row(StepEvent::Succeeded, detail(message)),
                id,
            ))
        }
        Action::Abort => {
            if !matches!(position, Position::Forward(_)) {
                return Err(ActionError::Refused(format!(
                    "saga {id} is compensating already ({step}); nothing to abort. Use retry or resolve on a compensation"
                )));
            }
            let message = format!("aborted by hand during {step}; compensating from here");
            Ok(moved_on(
                steps,
                position,
                false,
                row(StepEvent::Failed, detail(message)),
                id,
            ))
        }
    }
}

/// The current step ended by hand (`succeeded` or not), logged by `ended`,
/// and the start of the next one.
fn moved_on(
    steps: &[crate::definition::StepDef],
    position: Position,
    succeeded: bool,
    ended: LogEntry,
    saga_id: &str,
) -> Decision {
    let next = position.next(steps, succeeded);
    let seq = ended.seq;
    let mut log = vec![ended];
    if let Some(action) = next.action(steps) {
        log.push(LogEntry {
            seq: seq + 1,
            step: Arc::clone(&action.step),
            event: StepEvent::Started,
            attempt: 1,
            detail: json!({ "idempotency_key": format!("{saga_id}:{}", action.step) }),
        });
    }
    Decision {
        position: next,
        log,
        attempt: 1,
    }
}

/// The refusal of an action on an ended saga.
fn ended(saga_id: &str, status: SagaStatus, action: Action) -> ActionError {
    ActionError::Refused(format!(
        "saga {saga_id} has ended ({}); there is nothing to {}",
        status.as_str(),
        action.as_str()
    ))
}
