//! The sample's trip, for the travel routes (`GET /trip`, `POST /trips`):
//! the fields the sample names, checked as the sample's API always has, and
//! turned into the input of the `travel` definition. The engine itself knows
//! nothing of trips.

use chrono::{DateTime, Utc};
use common::wire::RunType;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The definition the travel routes start.
pub const DEFINITION: &str = "travel";

/// The trip as a caller sends it: every field optional. Unknown fields are
/// refused, so that a typo is not silently replaced by a default.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
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
    /// The input of the travel saga: every field but the trip id, which is
    /// the saga's id.
    pub fn input(&self) -> Value {
        let mut input = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut input {
            fields.remove("trip_id");
        }
        input
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
}
