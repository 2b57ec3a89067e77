//! Saga definitions: the document an author writes ([`document`]), its
//! templates ([`template`]), the checks it passes before it is accepted
//! ([`validate`]), a run that calls nothing ([`dry_run`]), and the versions
//! this process knows ([`registry`]).
//!
//! A [`Definition`] is a document compiled: its steps as actions whose
//! templates are compiled once, its input schema compiled once. The
//! executor walks its steps forward, and on a failure backward through the
//! compensations ([`Position`]); it knows nothing else about any saga.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub mod document;
pub mod dry_run;
pub mod registry;
pub mod template;
pub mod validate;

pub use document::{Document, Format};
pub use validate::{Checks, Diagnostic, Severity};

use crate::saga::SagaStatus;
use template::{RenderError, Scope, Template};

/// Each finished forward step's answer, by step name.
pub type Outputs = Map<String, Value>;

/// A definition, compiled.
#[derive(Debug)]
pub struct Definition {
    pub name: Arc<str>,
    pub version: i32,
    pub digest: String,
    pub document: Document,
    pub steps: Vec<StepDef>,
    /// The webhook events' messages, compiled.
    pub messages: template::Messages,
    input: InputSchema,
}

/// A forward step and what undoes it.
#[derive(Debug)]
pub struct StepDef {
    pub forward: Action,
    pub compensation: Option<Action>,
}

/// One participant call, its templates compiled.
#[derive(Debug)]
pub struct Action {
    /// The step's name, as logged.
    pub step: Arc<str>,
    pub participant: Arc<str>,
    pub method: reqwest::Method,
    pub path: Template,
    pub body: Option<Template>,
    /// Time limit of one attempt, over the orchestrator's default.
    pub timeout: Option<Duration>,
    /// Attempts of a forward call, over the orchestrator's default.
    pub max_attempts: Option<usize>,
    /// Statuses that fail a forward call at once; None: every 4xx but 408
    /// and 429.
    pub business_failure: Option<Vec<u16>>,
    /// The fields of this step's answer that later templates read
    /// (`steps.<step>.a.b` as `["a", "b"]`): an answer without one of them
    /// fails its attempt.
    pub needs: Vec<Vec<String>>,
}

/// Each step's answer fields that the templates of `steps` read, by step
/// name: `{{ steps.ReserveFlight.booking_id }}` reads `booking_id` of
/// ReserveFlight's answer.
pub fn fields_read(steps: &[StepDef]) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut read: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    let actions = steps
        .iter()
        .flat_map(|s| std::iter::once(&s.forward).chain(s.compensation.as_ref()));
    for action in actions {
        let exprs = action
            .path
            .exprs()
            .into_iter()
            .chain(action.body.iter().flat_map(|b| b.exprs()));
        for path in exprs.flat_map(|expr| expr.references()) {
            let [root, step, fields @ ..] = path.as_slice() else {
                continue;
            };
            if root != "steps" || fields.is_empty() {
                continue;
            }
            let known = read.entry(step.clone()).or_default();
            if !known.iter().any(|f| f.as_slice() == fields) {
                known.push(fields.to_vec());
            }
        }
    }
    read
}

/// A call rendered for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub path: String,
    pub body: Option<Value>,
}

impl Action {
    /// The call's path and body for this saga.
    pub fn render(&self, scope: &Scope<'_>) -> Result<Rendered, RenderError> {
        Ok(Rendered {
            path: self.path.render_path(scope)?,
            body: self.body.as_ref().map(|b| b.render(scope)).transpose()?,
        })
    }

    /// Whether an answer with `status` (not 2xx) ends a forward call at once.
    /// A 401 never does: the participant refused the call's signature (a
    /// key being rotated, a network duplicate refused as a replay), not the
    /// request, and a new attempt is signed anew.
    pub fn is_business_failure(&self, status: u16) -> bool {
        match &self.business_failure {
            Some(statuses) => statuses.contains(&status),
            None => (400..500).contains(&status) && ![401, 408, 429].contains(&status),
        }
    }
}

/// A saga input schema, compiled.
#[derive(Debug)]
struct InputSchema {
    schema: Option<Value>,
    validator: Option<jsonschema::Validator>,
}

impl Definition {
    /// The forward step with this name, if any.
    pub fn is_forward(&self, step: &str) -> bool {
        self.steps.iter().any(|s| &*s.forward.step == step)
    }

    /// The input with the schema's defaults filled in, checked against the
    /// schema; the error names each field that is wrong.
    pub fn prepare_input(&self, mut input: Value) -> Result<Value, String> {
        if !input.is_object() {
            return Err("the input must be a JSON object".into());
        }
        if let Some(schema) = &self.input.schema {
            fill_defaults(schema, &mut input);
        }
        if let Some(validator) = &self.input.validator {
            let errors: Vec<String> = validator
                .iter_errors(&input)
                .map(|err| {
                    let at = err.instance_path().to_string();
                    if at.is_empty() {
                        format!("input: {err}")
                    } else {
                        format!("input{}: {err}", at.replace('/', "."))
                    }
                })
                .collect();
            if !errors.is_empty() {
                return Err(errors.join("; "));
            }
        }
        Ok(input)
    }
}

/// Fills in the `default` of every property that `value` lacks, at every
/// level the schema describes with `properties`.
fn fill_defaults(schema: &Value, value: &mut Value) {
    let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object_mut(),
    ) else {
        return;
    };
    for (name, property) in properties {
        if !object.contains_key(name)
            && let Some(default) = property.get("default")
        {
            object.insert(name.clone(), default.clone());
        }
        if let Some(inner) = object.get_mut(name) {
            fill_defaults(property, inner);
        }
    }
}

/// A saga's place in its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Running the forward step at this index.
    Forward(usize),
    /// Running the compensation of the forward step at this index.
    Compensating(usize),
    /// Ended with this status.
    Ended(SagaStatus),
}

impl Position {
    /// The position stored as `(status, cursor)`.
    pub fn from_row(status: SagaStatus, cursor: i32) -> Self {
        let index = usize::try_from(cursor).unwrap_or_default();
        match status {
            SagaStatus::Running => Position::Forward(index),
            SagaStatus::Compensating => Position::Compensating(index),
            ended => Position::Ended(ended),
        }
    }

    pub fn status(self) -> SagaStatus {
        match self {
            Position::Forward(_) => SagaStatus::Running,
            Position::Compensating(_) => SagaStatus::Compensating,
            Position::Ended(status) => status,
        }
    }

    pub fn cursor(self) -> i32 {
        match self {
            Position::Forward(i) | Position::Compensating(i) => {
                i32::try_from(i).unwrap_or(i32::MAX)
            }
            Position::Ended(_) => -1,
        }
    }

    /// The call to make at this position.
    pub fn action(self, steps: &[StepDef]) -> Option<&Action> {
        match self {
            Position::Forward(i) => steps.get(i).map(|def| &def.forward),
            Position::Compensating(i) => steps.get(i).and_then(|def| def.compensation.as_ref()),
            Position::Ended(_) => None,
        }
    }

    /// Where the saga goes once the call at this position has ended.
    /// A failed forward step is treated as possibly done: its own
    /// compensation runs first, then every earlier one, newest first.
    pub fn next(self, steps: &[StepDef], succeeded: bool) -> Position {
        match self {
            Position::Forward(i) if succeeded => {
                if i + 1 < steps.len() {
                    Position::Forward(i + 1)
                } else {
                    Position::Ended(SagaStatus::Succeeded)
                }
            }
            Position::Forward(i) => compensation_from(steps, Some(i)),
            // A compensation ends only by succeeding; it is retried until then.
            Position::Compensating(i) => compensation_from(steps, i.checked_sub(1)),
            ended @ Position::Ended(_) => ended,
        }
    }
}

/// The newest step at or before `from` that has a compensation.
fn compensation_from(steps: &[StepDef], from: Option<usize>) -> Position {
    let Some(from) = from else {
        return Position::Ended(SagaStatus::Failed);
    };
    (0..=from.min(steps.len().saturating_sub(1)))
        .rev()
        .find(|&i| steps[i].compensation.is_some())
        .map_or(Position::Ended(SagaStatus::Failed), Position::Compensating)
}

/// The repository's travel saga, for tests and the dry-run examples.
pub const TRAVEL_YAML: &str = include_str!("../../../sagas/travel.yaml");

/// The repository's travel saga, compiled, for the unit tests.
#[cfg(test)]
pub(crate) fn travel() -> Definition {
    let doc = Document::parse(TRAVEL_YAML, Format::Yaml).unwrap();
    validate::compile(doc, &Checks::default())
        .definition
        .expect("travel.yaml is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps that run when the forward step at `fail_at` fails.
    fn flow(fail_at: Option<usize>) -> (Vec<String>, SagaStatus) {
        let def = travel();
        let mut ran = Vec::new();
        let mut position = Position::Forward(0);
        loop {
            let Some(action) = position.action(&def.steps) else {
                let Position::Ended(status) = position else {
                    panic!("no action at {position:?}");
                };
                return (ran, status);
            };
            ran.push(action.step.to_string());
            let succeeded = !matches!(position, Position::Forward(i) if Some(i) == fail_at);
            position = position.next(&def.steps, succeeded);
        }
    }

    #[test]
    fn walking_the_travel_definition_yields_the_six_flows() {
        let names = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let forward = [
            "ReserveFlight",
            "ReserveCarRental",
            "ProcessPayment",
            "ConfirmFlight",
            "ConfirmCarRental",
        ];
        assert_eq!(flow(None), (names(&forward), SagaStatus::Succeeded));
        assert_eq!(
            flow(Some(0)),
            (
                names(&["ReserveFlight", "CancelFlightReservation"]),
                SagaStatus::Failed
            )
        );
        assert_eq!(
            flow(Some(1)),
            (
                names(&[
                    "ReserveFlight",
                    "ReserveCarRental",
                    "CancelRentalReservation",
                    "CancelFlightReservation"
                ]),
                SagaStatus::Failed
            )
        );
        let undo_all = [
            "RefundPayment",
            "CancelRentalReservation",
            "CancelFlightReservation",
        ];
        for fail_at in 2..5 {
            let expected = [&forward[..=fail_at], &undo_all[..]].concat();
            assert_eq!(flow(Some(fail_at)), (names(&expected), SagaStatus::Failed));
        }
    }

    #[test]
    fn positions_round_trip_through_rows() {
        for position in [Position::Forward(3), Position::Compensating(0)] {
            assert_eq!(
                Position::from_row(position.status(), position.cursor()),
                position
            );
        }
    }

    #[test]
    fn input_defaults_are_filled_before_the_schema_is_checked() {
        let def = travel();
        let input = def.prepare_input(serde_json::json!({})).unwrap();
        assert_eq!(input["depart_city"], "Detroit");
        assert_eq!(input["amount"], "750.00");
        assert_eq!(input["run_type"], "success");
        let err = def
            .prepare_input(serde_json::json!({"run_type": "failAll", "depart_city": ""}))
            .unwrap_err();
        assert!(err.contains("input.run_type"), "{err}");
        assert!(err.contains("input.depart_city"), "{err}");
    }
}
