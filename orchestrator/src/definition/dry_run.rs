//! A saga run that calls nothing and writes nothing: each call rendered as it
//! would be sent, with the participants' answers mocked, so that a
//! definition can be tried before it is deployed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::template::Scope;
use super::{Definition, Outputs, Position};
use crate::saga::SagaStatus;

/// A mocked answer for one step.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub status: u16,
    #[serde(default)]
    pub body: Option<Value>,
}

/// One call the saga would make.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Call {
    pub step: String,
    pub method: String,
    pub url: String,
    pub body: Option<Value>,
    pub idempotency_key: String,
    /// The mocked answer's status.
    pub status: u16,
}

/// The calls in order, and how the saga would end.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    pub calls: Vec<Call>,
    /// `succeeded` or `failed`; `compensating` when a mocked compensation
    /// never succeeds (a real saga would retry it for ever).
    pub status: SagaStatus,
}

/// How many attempts a mocked compensation failure is shown before the run
/// stops: a real saga retries it until it succeeds.
const COMPENSATION_ATTEMPTS_SHOWN: usize = 3;

/// Runs `definition` for `saga_id` and its prepared `input`, with the
/// answers `outcomes` gives (by step name; every other step succeeds, with a
/// mocked answer holding each field later templates read). `base_url` gives
/// each participant's base URL; `forward_attempts` is the orchestrator's
/// default attempt budget.
pub fn run(
    definition: &Definition,
    saga_id: &str,
    input: &Value,
    outcomes: &BTreeMap<String, Outcome>,
    base_url: impl Fn(&str) -> String,
    forward_attempts: usize,
) -> DryRun {
    let mocks = mocked_answers(definition);
    let mut outputs = Outputs::new();
    let mut calls = Vec::new();
    let mut position = Position::Forward(0);
    while let Some(action) = position.action(&definition.steps) {
        let forward = matches!(position, Position::Forward(_));
        let scope = Scope {
            input,
            saga_id,
            definition: &definition.name,
            version: definition.version,
            steps: &outputs,
        };
        let outcome = outcomes.get(&*action.step);
        let status = outcome.map_or(200, |o| o.status);
        let rendered = action.render(&scope);
        let (url, body, status) = match &rendered {
            Ok(call) => (
                format!("{}{}", base_url(&action.participant), call.path),
                call.body.clone(),
                status,
            ),
            // A template that fails fails the step without a call.
            Err(err) => (
                String::new(),
                Some(json!({"error": "template", "message": err.to_string()})),
                0,
            ),
        };
        let succeeded = rendered.is_ok() && (200..300).contains(&status);
        let attempts = if succeeded || rendered.is_err() {
            1
        } else if !forward {
            COMPENSATION_ATTEMPTS_SHOWN
        } else if action.is_business_failure(status) {
            1
        } else {
            action.max_attempts.unwrap_or(forward_attempts).max(1)
        };
        for _ in 0..attempts {
            if rendered.is_err() {
                break;
            }
            calls.push(Call {
                step: action.step.to_string(),
                method: action.method.to_string(),
                url: url.clone(),
                body: body.clone(),
                idempotency_key: format!("{saga_id}:{}", action.step),
                status,
            });
        }
        if !forward && !succeeded {
            return DryRun {
                calls,
                status: SagaStatus::Compensating,
            };
        }
        if forward && succeeded {
            let answer = outcome
                .and_then(|o| o.body.clone())
                .or_else(|| mocks.get(&*action.step).cloned())
                .unwrap_or_else(|| Value::Object(Map::new()));
            outputs.insert(action.step.to_string(), answer);
        }
        position = position.next(&definition.steps, succeeded);
    }
    DryRun {
        calls,
        status: position.status(),
    }
}

/// For each forward step, an answer holding every field that a template
/// reads from it (`steps.<step>.a.b`), each a string naming itself.
fn mocked_answers(definition: &Definition) -> BTreeMap<String, Value> {
    let mut mocks: BTreeMap<String, Value> = BTreeMap::new();
    for (step, paths) in super::fields_read(&definition.steps) {
        let mock = mocks
            .entry(step.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        for fields in paths {
            let mut at = &mut *mock;
            for (i, field) in fields.iter().enumerate() {
                let Value::Object(map) = at else { break };
                let leaf = i + 1 == fields.len();
                at = map.entry(field.clone()).or_insert_with(|| {
                    if leaf {
                        Value::String(format!("mock:{step}.{}", fields.join(".")))
                    } else {
                        Value::Object(Map::new())
                    }
                });
            }
        }
    }
    mocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::travel;

    #[test]
    fn a_mocked_failure_runs_the_compensations_in_reverse() {
        let def = travel();
        let input = def
            .prepare_input(json!({"run_type": "failPayment"}))
            .unwrap();
        let outcomes = BTreeMap::from([(
            "ProcessPayment".to_owned(),
            Outcome {
                status: 422,
                body: None,
            },
        )]);
        let run = run(
            &def,
            "trip-9",
            &input,
            &outcomes,
            |p| format!("http://{p}"),
            4,
        );
        let steps: Vec<&str> = run.calls.iter().map(|c| c.step.as_str()).collect();
        assert_eq!(
            steps,
            [
                "ReserveFlight",
                "ReserveCarRental",
                "ProcessPayment",
                "RefundPayment",
                "CancelRentalReservation",
                "CancelFlightReservation"
            ]
        );
        assert_eq!(run.status, SagaStatus::Failed);
        let payment = &run.calls[2];
        assert_eq!(payment.url, "http://payments/payments");
        assert_eq!(payment.idempotency_key, "trip-9:ProcessPayment");
        let body = payment.body.as_ref().unwrap();
        assert_eq!(body["flight_booking_id"], "mock:ReserveFlight.booking_id");
        assert_eq!(body["amount"], "750.00");
        assert_eq!(
            run.calls[5].url,
            "http://flights/reservations/trip-9/cancel"
        );
    }

    #[test]
    fn a_transient_failure_is_retried_until_the_budget_is_spent() {
        let def = travel();
        let input = def.prepare_input(json!({})).unwrap();
        let outcomes = BTreeMap::from([(
            "ReserveCarRental".to_owned(),
            Outcome {
                status: 503,
                body: None,
            },
        )]);
        let run = run(&def, "t", &input, &outcomes, |p| p.to_owned(), 3);
        let cars = run
            .calls
            .iter()
            .filter(|c| c.step == "ReserveCarRental")
            .count();
        assert_eq!((cars, run.status), (3, SagaStatus::Failed));
    }
}
