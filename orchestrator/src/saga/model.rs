//! The saga's vocabulary: the eight step names, saga and step-event statuses,
//! and the trip input with the sample's defaults.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use common::wire::RunType;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The eight step names, the same in the API, `saga_log`, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    ReserveFlight,
    ReserveCarRental,
    ProcessPayment,
    ConfirmFlight,
    ConfirmCarRental,
    CancelFlightReservation,
    CancelRentalReservation,
    RefundPayment,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::ReserveFlight,
        Step::ReserveCarRental,
        Step::ProcessPayment,
        Step::ConfirmFlight,
        Step::ConfirmCarRental,
        Step::CancelFlightReservation,
        Step::CancelRentalReservation,
        Step::RefundPayment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::ReserveFlight => "ReserveFlight",
            Step::ReserveCarRental => "ReserveCarRental",
            Step::ProcessPayment => "ProcessPayment",
            Step::ConfirmFlight => "ConfirmFlight",
            Step::ConfirmCarRental => "ConfirmCarRental",
            Step::CancelFlightReservation => "CancelFlightReservation",
            Step::CancelRentalReservation => "CancelRentalReservation",
            Step::RefundPayment => "RefundPayment",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| format!("unknown step {s:?}"))
    }
}

/// Where a saga is: still going forward, undoing, or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "saga_status", rename_all = "lowercase")]
pub enum SagaStatus {
    Running,
    Compensating,
    Succeeded,
    Failed,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 4] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Succeeded,
        SagaStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Succeeded => "succeeded",
            SagaStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Succeeded | SagaStatus::Failed)
    }
}

impl FromStr for SagaStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}; use running, compensating, succeeded or failed")
            })
    }
}

/// One event of a step in `saga_log`: `started` when the first attempt is
/// sent, `retrying` for each failed attempt that will be retried, then one
/// final `succeeded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "step_event", rename_all = "lowercase")]
pub enum StepEvent {
    Started,
    Retrying,
    Succeeded,
    Failed,
}

impl StepEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            StepEvent::Started => "started",
            StepEvent::Retrying => "retrying",
            StepEvent::Succeeded => "succeeded",
            StepEvent::Failed => "failed",
        }
    }
}

/// The trip as a caller sends it: every field optional. Unknown fields are
/// refused, so that a typo is not silently replaced by a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripInput {
    pub trip_id: Option<String>,
    pub depart_city: Option<String>,
    pub depart_time: Option<DateTime<Utc>>,
    pub arrive_city: Option<String>,
    pub arrive_time: Option<DateTime<Utc>>,
    pub rental: Option<String>,
    pub rental_from: Option<DateTime<Utc>>,
    pub rental_to: Option<DateTime<Utc>>,
    pub run_type: Option<String>,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    /// Seconds the forward steps may take before the saga compensates.
    pub deadline_secs: Option<u64>,
}

/// The longest deadline accepted: a week.
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// The trip with every default filled in, as stored in `sagas.input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    pub trip_id: String,
    pub depart_city: String,
    pub depart_time: DateTime<Utc>,
    pub arrive_city: String,
    pub arrive_time: DateTime<Utc>,
    pub rental: String,
    pub rental_from: DateTime<Utc>,
    pub rental_to: DateTime<Utc>,
    pub run_type: RunType,
    pub amount: Decimal,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

/// The longest city or car name accepted.
const NAME_MAX_LEN: usize = 200;

fn sample_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

impl TripInput {
    /// Fills the sample's defaults and checks every field; the error says
    /// which field is wrong and how.
    pub fn into_trip(self) -> Result<Trip, String> {
        let trip_id = self
            .trip_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        common::wire::validate_trip_id(&trip_id)?;
        let run_type = match self.run_type.as_deref() {
            None => RunType::Success,
            Some(s) => s.parse()?,
        };
        let trip = Trip {
            trip_id,
            depart_city: self.depart_city.unwrap_or_else(|| "Detroit".into()),
            depart_time: self
                .depart_time
                .unwrap_or_else(|| sample_time("2021-07-07T06:00:00.000Z")),
            arrive_city: self.arrive_city.unwrap_or_else(|| "Frankfurt".into()),
            arrive_time: self
                .arrive_time
                .unwrap_or_else(|| sample_time("2021-07-09T08:00:00.000Z")),
            rental: self.rental.unwrap_or_else(|| "BMW".into()),
            rental_from: self
                .rental_from
                .unwrap_or_else(|| sample_time("2021-07-09T00:00:00.000Z")),
            rental_to: self
                .rental_to
                .unwrap_or_else(|| sample_time("2021-07-17T00:00:00.000Z")),
            run_type,
            amount: self.amount.unwrap_or_else(|| Decimal::new(75000, 2)),
            currency: self.currency.unwrap_or_else(|| "USD".into()),
            deadline_secs: self.deadline_secs,
        };
        if trip
            .deadline_secs
            .is_some_and(|secs| secs == 0 || secs > MAX_DEADLINE_SECS)
        {
            return Err(format!(
                "deadline_secs must be from 1 to {MAX_DEADLINE_SECS}"
            ));
        }
        for (field, value) in [
            ("depart_city", &trip.depart_city),
            ("arrive_city", &trip.arrive_city),
            ("rental", &trip.rental),
        ] {
            if value.trim().is_empty() || value.len() > NAME_MAX_LEN {
                return Err(format!("{field} must have 1 to {NAME_MAX_LEN} characters"));
            }
        }
        if trip.arrive_time < trip.depart_time {
            return Err("arrive_time is before depart_time".into());
        }
        if trip.rental_to < trip.rental_from {
            return Err("rental_to is before rental_from".into());
        }
        common::wire::validate_payment(trip.amount, &trip.currency)?;
        Ok(trip)
    }
}

impl Trip {
    /// The names of the fields in which `self` and `other` differ.
    pub fn differing_fields(&self, other: &Trip) -> Vec<&'static str> {
        let mut fields = Vec::new();
        macro_rules! compare {
            ($($field:ident),*) => {
                $(if self.$field != other.$field { fields.push(stringify!($field)); })*
            };
        }
        compare!(
            trip_id,
            depart_city,
            depart_time,
            arrive_city,
            arrive_time,
            rental,
            rental_from,
            rental_to,
            run_type,
            amount,
            currency,
            deadline_secs
        );
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_samples() {
        let trip = TripInput::default().into_trip().unwrap();
        assert_eq!(trip.depart_city, "Detroit");
        assert_eq!(trip.arrive_city, "Frankfurt");
        assert_eq!(trip.rental, "BMW");
        assert_eq!(trip.amount.to_string(), "750.00");
        assert_eq!(trip.currency, "USD");
        assert_eq!(trip.run_type, RunType::Success);
        assert_eq!(trip.depart_time.to_rfc3339(), "2021-07-07T06:00:00+00:00");
        assert!(uuid::Uuid::parse_str(&trip.trip_id).is_ok());
    }

    #[test]
    fn bad_fields_are_named() {
        let input = TripInput {
            run_type: Some("failAll".into()),
            ..Default::default()
        };
        assert!(input.into_trip().unwrap_err().contains("unknown runType"));
        let input = TripInput {
            depart_city: Some(" ".into()),
            ..Default::default()
        };
        assert!(input.into_trip().unwrap_err().contains("depart_city"));
        let input = TripInput {
            currency: Some("usd".into()),
            ..Default::default()
        };
        assert!(input.into_trip().unwrap_err().contains("currency"));
    }

    #[test]
    fn names_round_trip() {
        for step in Step::ALL {
            assert_eq!(step.as_str().parse::<Step>(), Ok(step));
        }
        for status in SagaStatus::ALL {
            assert_eq!(status.as_str().parse::<SagaStatus>(), Ok(status));
        }
    }
}
