//! payments-svc's errors and the answers they become.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::error::ErrorBody;
use common::idempotency::{Answer, BusinessError};
use common::wire::RunType;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the trip id in the path or body is not acceptable.
    #[error("{0}")]
    InvalidTripId(String),

    /// 422: the run type asks this action to fail, as the sample's functions do.
    #[error("runType {run_type} makes payments-svc fail {action}")]
    Injected {
        run_type: RunType,
        action: &'static str,
    },

    /// 400: a run type other than success, with failure injection off
    /// (`common::booking::FailureInjection`).
    #[error(transparent)]
    InjectionDisabled(common::booking::Error),

    /// 404: no reservation for this trip.
    #[error("no payment for trip {0}")]
    NotFound(String),

    /// 409: the trip's payment was refunded; it cannot be charged again.
    #[error("the payment of trip {0} is refunded")]
    Refunded(String),

    /// 422: the currency is not three capital letters, or the amount not
    /// positive with at most two decimals.
    #[error("{0}")]
    InvalidPayment(String),

    /// 503 when the database is out (`common::db::is_outage`); otherwise 500,
    /// logged, answered opaquely.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl BusinessError for Error {
    fn answer(&self) -> Option<Answer> {
        let message = self.to_string();
        let (status, body) = match self {
            Error::InvalidTripId(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_trip_id", message),
            ),
            Error::Injected { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::new(
                    "injected_failure",
                    format!("{message}, as asked (injected failure); send runType success to pay"),
                ),
            ),
            Error::InjectionDisabled(refused) => return refused.answer(),
            Error::NotFound(_) => (
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", format!("{message}; charge it first")),
            ),
            Error::Refunded(_) => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "payment_refunded",
                    format!("{message}; pay for the trip under a new trip id"),
                ),
            ),
            Error::InvalidPayment(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::new("invalid_payment", message),
            ),
            Error::Database(_) => return None,
        };
        Some(Answer::error(status, body))
    }

    fn database(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.respond()
    }
}
