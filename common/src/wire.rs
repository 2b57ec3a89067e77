//! The participant wire contract: what the orchestrator sends and what the
//! participants answer. Written once, used by both sides.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header carrying `<trip_id>:<step>` on every participant call, so that a
/// resent call can be recognised.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest trip id accepted anywhere.
pub const TRIP_ID_MAX_LEN: usize = 64;

/// Checks a trip id: 1 to 64 characters from `[A-Za-z0-9._:-]`, so that it is
/// safe in a URL path, a header and a log line without escaping.
pub fn validate_trip_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("trip id is empty; give 1 to 64 characters from [A-Za-z0-9._:-]".into());
    }
    if id.len() > TRIP_ID_MAX_LEN {
        return Err(format!(
            "trip id is {} characters long; the limit is {TRIP_ID_MAX_LEN}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "trip id contains {c:?}; use only letters, digits and . _ : -"
        ));
    }
    Ok(())
}

/// Checks a payment: a positive amount below 10^10 with at most two
/// decimals, and a currency of three capital letters (ISO 4217 style).
pub fn validate_payment(amount: Decimal, currency: &str) -> Result<(), String> {
    if amount <= Decimal::ZERO || amount.scale() > 2 || amount >= Decimal::new(10_000_000_000, 0) {
        return Err(format!(
            "amount {amount} is not a positive sum below 10000000000 with at most two decimals"
        ));
    }
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "currency {currency:?} is not a three-letter ISO 4217 code such as USD"
        ));
    }
    Ok(())
}

/// The sample's run types: `success`, or which participant action should fail
/// with a business error.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum RunType {
    #[default]
    Success,
    FailFlightsReservation,
    FailCarRentalReservation,
    FailPayment,
    FailFlightsConfirmation,
    FailCarRentalConfirmation,
}

impl RunType {
    pub const ALL: [RunType; 6] = [
        RunType::Success,
        RunType::FailFlightsReservation,
        RunType::FailCarRentalReservation,
        RunType::FailPayment,
        RunType::FailFlightsConfirmation,
        RunType::FailCarRentalConfirmation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Success => "success",
            RunType::FailFlightsReservation => "failFlightsReservation",
            RunType::FailCarRentalReservation => "failCarRentalReservation",
            RunType::FailPayment => "failPayment",
            RunType::FailFlightsConfirmation => "failFlightsConfirmation",
            RunType::FailCarRentalConfirmation => "failCarRentalConfirmation",
        }
    }
}

impl fmt::Display for RunType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunType::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = RunType::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown runType {s:?}; use one of {}", names.join(", "))
            })
    }
}

/// A flight reservation or a car rental. Flights and cars keep the same
/// lifecycle, each in its own schema's `booking_status` type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "booking_status", rename_all = "lowercase")]
pub enum BookingStatus {
    Pending,
    Confirmed,
    Cancelled,
}

/// A payment's lifecycle.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "payment_status", rename_all = "lowercase")]
pub enum PaymentStatus {
    Charged,
    Refunded,
}

/// `POST /reservations` on flights-svc.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlightRequest {
    pub trip_id: String,
    pub depart_city: String,
    pub depart_time: DateTime<Utc>,
    pub arrive_city: String,
    pub arrive_time: DateTime<Utc>,
    #[serde(default)]
    pub run_type: RunType,
}

/// `POST /rentals` on cars-svc.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CarRequest {
    pub trip_id: String,
    pub rental: String,
    pub rental_from: DateTime<Utc>,
    pub rental_to: DateTime<Utc>,
    #[serde(default)]
    pub run_type: RunType,
}

/// `POST /payments` on payments-svc: charge the trip, naming the bookings the
/// earlier steps made.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub trip_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub flight_booking_id: Uuid,
    pub car_booking_id: Uuid,
    #[serde(default)]
    pub run_type: RunType,
}

/// Body of confirm, cancel and refund: the trip is in the path.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    #[serde(default)]
    pub run_type: RunType,
    /// On confirm, the booking the reserve step answered; checked when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<Uuid>,
}

/// A flight reservation as flights-svc answers it. The trip fields are empty
/// on a tombstone (a cancel for a trip never reserved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlightReservation {
    pub trip_id: String,
    pub booking_id: Uuid,
    pub status: BookingStatus,
    pub depart_city: Option<String>,
    pub depart_time: Option<DateTime<Utc>>,
    pub arrive_city: Option<String>,
    pub arrive_time: Option<DateTime<Utc>>,
}

/// A car rental as cars-svc answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CarRental {
    pub trip_id: String,
    pub booking_id: Uuid,
    pub status: BookingStatus,
    pub rental: Option<String>,
    pub rental_from: Option<DateTime<Utc>>,
    pub rental_to: Option<DateTime<Utc>>,
}

/// A payment as payments-svc answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Payment {
    pub trip_id: String,
    pub payment_id: Uuid,
    pub status: PaymentStatus,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    pub flight_booking_id: Option<Uuid>,
    pub car_booking_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trip_ids() {
        assert!(validate_trip_id("trip-1.a_b:C").is_ok());
        assert!(validate_trip_id("").is_err());
        assert!(validate_trip_id(&"a".repeat(64)).is_ok());
        assert!(validate_trip_id(&"a".repeat(65)).is_err());
        assert!(validate_trip_id("a/b").is_err());
        assert!(validate_trip_id("é").is_err());
    }

    #[test]
    fn run_types_round_trip() {
        for r in RunType::ALL {
            assert_eq!(r.as_str().parse::<RunType>(), Ok(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        let err = "failEverything".parse::<RunType>().unwrap_err();
        assert!(err.contains("failPayment"), "{err}");
    }
}
