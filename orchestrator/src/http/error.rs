//! The orchestrator's errors and the answers they become.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::error::ErrorBody;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: a trip field (runType, tripID, a city, a time, the payment) is
    /// not acceptable; the message names it.
    #[error("{0}")]
    InvalidTrip(String),

    /// 400: a query parameter (wait, status, limit, before) is not acceptable.
    #[error("{0}")]
    InvalidQuery(String),

    /// 409: the trip has a saga already, started with other input.
    #[error("trip {trip_id} was started with different {}", fields.join(", "))]
    Conflict {
        trip_id: String,
        fields: Vec<&'static str>,
    },

    /// 404: no saga for this trip.
    #[error("no saga for trip {0}")]
    NotFound(String),

    /// 503 when the database is unreachable or does not answer (retry
    /// later), else 500; logged, answered opaquely.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

    /// 503 when the database is unreachable (retry later), else 500; logged.
    #[error(transparent)]
    Write(#[from] crate::saga::writer::WriteError),

    /// 500: a stored saga cannot be read back; logged, answered opaquely.
    #[error("stored saga is unreadable: {0}")]
    Corrupt(String),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match &self {
            Error::InvalidTrip(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_trip", message),
            ),
            Error::InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_query", message),
            ),
            Error::Conflict { .. } => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "trip_conflict",
                    format!("{message}; send the same input to see that saga, or use a new tripID"),
                ),
            ),
            Error::NotFound(_) => (
                StatusCode::NOT_FOUND,
                ErrorBody::new(
                    "not_found",
                    format!("{message}; start it with GET /trip or POST /trips"),
                ),
            ),
            Error::Database(err) if crate::saga::executor::is_outage(err) => {
                tracing::warn!(%err, "database unavailable");
                unavailable()
            }
            Error::Database(err) => return common::error::internal(err),
            Error::Write(err) if err.outage => {
                tracing::warn!(%err, "database unavailable");
                unavailable()
            }
            Error::Write(err) => return common::error::internal(err),
            Error::Corrupt(_) => return common::error::internal(&self),
        };
        body.into_response_with(status)
    }
}

/// The database is unreachable or does not answer: not the caller's doing.
fn unavailable() -> (StatusCode, ErrorBody) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorBody::new(
            "unavailable",
            "the database is unreachable; retry the same request shortly",
        ),
    )
}
