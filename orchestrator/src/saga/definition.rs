//! The travel saga as data, the way the sample's state machine defines it: an
//! ordered list of steps, each with its participant call and its
//! compensation. The executor knows nothing about flights or cars; walking
//! this list forward, and on a failure backward through the compensations,
//! yields the six flows of the design.

use common::wire::{ActionRequest, CarRequest, FlightRequest, PaymentRequest};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::model::{SagaStatus, Step, Trip};

/// The version of the definition new sagas start with. A saga keeps the
/// version it started with, so a deploy that changes the steps does not
/// confuse the sagas in flight: add a new version, keep the old ones.
pub const DEFINITION_VERSION: i32 = 1;

/// Each finished forward step's answer, by step name.
pub type Outputs = Map<String, Value>;

/// Which participant serves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Participant {
    Flights,
    Cars,
    Payments,
}

/// One participant call.
#[derive(Debug)]
pub struct Action {
    pub step: Step,
    pub participant: Participant,
    /// The path on the participant; `{trip_id}` stands for the trip id.
    pub path: &'static str,
    /// Builds the request body from the trip and the earlier steps' answers.
    pub body: fn(&Trip, &Outputs) -> Result<Value, String>,
}

/// A forward step and what undoes it.
#[derive(Debug)]
pub struct StepDef {
    pub forward: Action,
    pub compensation: Option<Action>,
}

/// The definition a saga started with, if this build still knows it.
pub fn definition(version: i32) -> Option<&'static [StepDef]> {
    match version {
        1 => Some(&V1),
        _ => None,
    }
}

/// The names of the forward steps of these definition versions: the steps
/// whose `succeeded` log rows hold the saga's outputs.
pub fn forward_steps(versions: &[i32]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = versions
        .iter()
        .filter_map(|&version| definition(version))
        .flatten()
        .map(|def| def.forward.step.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

static V1: [StepDef; 5] = [
    StepDef {
        forward: Action {
            step: Step::ReserveFlight,
            participant: Participant::Flights,
            path: "/reservations",
            body: flight_request,
        },
        compensation: Some(Action {
            step: Step::CancelFlightReservation,
            participant: Participant::Flights,
            path: "/reservations/{trip_id}/cancel",
            body: plain_action,
        }),
    },
    StepDef {
        forward: Action {
            step: Step::ReserveCarRental,
            participant: Participant::Cars,
            path: "/rentals",
            body: car_request,
        },
        compensation: Some(Action {
            step: Step::CancelRentalReservation,
            participant: Participant::Cars,
            path: "/rentals/{trip_id}/cancel",
            body: plain_action,
        }),
    },
    StepDef {
        forward: Action {
            step: Step::ProcessPayment,
            participant: Participant::Payments,
            path: "/payments",
            body: payment_request,
        },
        compensation: Some(Action {
            step: Step::RefundPayment,
            participant: Participant::Payments,
            path: "/payments/{trip_id}/refund",
            body: plain_action,
        }),
    },
    StepDef {
        forward: Action {
            step: Step::ConfirmFlight,
            participant: Participant::Flights,
            path: "/reservations/{trip_id}/confirm",
            body: confirm_flight,
        },
        compensation: None,
    },
    StepDef {
        forward: Action {
            step: Step::ConfirmCarRental,
            participant: Participant::Cars,
            path: "/rentals/{trip_id}/confirm",
            body: confirm_car,
        },
        compensation: None,
    },
];

fn to_value(body: impl serde::Serialize) -> Result<Value, String> {
    serde_json::to_value(body).map_err(|err| err.to_string())
}

/// The `booking_id` that `step` answered.
fn booking_id(outputs: &Outputs, step: Step) -> Result<Uuid, String> {
    outputs
        .get(step.as_str())
        .and_then(|output| output.get("booking_id"))
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| format!("{step} recorded no booking_id"))
}

fn flight_request(trip: &Trip, _: &Outputs) -> Result<Value, String> {
    to_value(FlightRequest {
        trip_id: trip.trip_id.clone(),
        depart_city: trip.depart_city.clone(),
        depart_time: trip.depart_time,
        arrive_city: trip.arrive_city.clone(),
        arrive_time: trip.arrive_time,
        run_type: trip.run_type,
    })
}

fn car_request(trip: &Trip, _: &Outputs) -> Result<Value, String> {
    to_value(CarRequest {
        trip_id: trip.trip_id.clone(),
        rental: trip.rental.clone(),
        rental_from: trip.rental_from,
        rental_to: trip.rental_to,
        run_type: trip.run_type,
    })
}

fn payment_request(trip: &Trip, outputs: &Outputs) -> Result<Value, String> {
    to_value(PaymentRequest {
        trip_id: trip.trip_id.clone(),
        amount: trip.amount,
        currency: trip.currency.clone(),
        flight_booking_id: booking_id(outputs, Step::ReserveFlight)?,
        car_booking_id: booking_id(outputs, Step::ReserveCarRental)?,
        run_type: trip.run_type,
    })
}

fn confirm_flight(trip: &Trip, outputs: &Outputs) -> Result<Value, String> {
    to_value(ActionRequest {
        run_type: trip.run_type,
        booking_id: Some(booking_id(outputs, Step::ReserveFlight)?),
    })
}

fn confirm_car(trip: &Trip, outputs: &Outputs) -> Result<Value, String> {
    to_value(ActionRequest {
        run_type: trip.run_type,
        booking_id: Some(booking_id(outputs, Step::ReserveCarRental)?),
    })
}

fn plain_action(trip: &Trip, _: &Outputs) -> Result<Value, String> {
    to_value(ActionRequest {
        run_type: trip.run_type,
        booking_id: None,
    })
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
    pub fn action(self, steps: &'static [StepDef]) -> Option<&'static Action> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps that run when the forward step at `fail_at` fails.
    fn flow(fail_at: Option<usize>) -> (Vec<Step>, SagaStatus) {
        let steps = definition(DEFINITION_VERSION).unwrap();
        let mut ran = Vec::new();
        let mut position = Position::Forward(0);
        loop {
            let Some(action) = position.action(steps) else {
                let Position::Ended(status) = position else {
                    panic!("no action at {position:?}");
                };
                return (ran, status);
            };
            ran.push(action.step);
            let succeeded = !matches!(position, Position::Forward(i) if Some(i) == fail_at);
            position = position.next(steps, succeeded);
        }
    }

    #[test]
    fn walking_the_definition_yields_the_six_flows() {
        use Step::*;
        assert_eq!(
            flow(None),
            (
                vec![
                    ReserveFlight,
                    ReserveCarRental,
                    ProcessPayment,
                    ConfirmFlight,
                    ConfirmCarRental
                ],
                SagaStatus::Succeeded
            )
        );
        assert_eq!(
            flow(Some(0)),
            (
                vec![ReserveFlight, CancelFlightReservation],
                SagaStatus::Failed
            )
        );
        assert_eq!(
            flow(Some(1)),
            (
                vec![
                    ReserveFlight,
                    ReserveCarRental,
                    CancelRentalReservation,
                    CancelFlightReservation
                ],
                SagaStatus::Failed
            )
        );
        let undo_all = [
            RefundPayment,
            CancelRentalReservation,
            CancelFlightReservation,
        ];
        for (fail_at, forward) in [
            (2, vec![ReserveFlight, ReserveCarRental, ProcessPayment]),
            (
                3,
                vec![
                    ReserveFlight,
                    ReserveCarRental,
                    ProcessPayment,
                    ConfirmFlight,
                ],
            ),
            (
                4,
                vec![
                    ReserveFlight,
                    ReserveCarRental,
                    ProcessPayment,
                    ConfirmFlight,
                    ConfirmCarRental,
                ],
            ),
        ] {
            let expected = [forward, undo_all.to_vec()].concat();
            assert_eq!(flow(Some(fail_at)), (expected, SagaStatus::Failed));
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
}
