//! The orchestrator's errors and the answers they become.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::error::ErrorBody;
use serde::Serialize;

use crate::definition::Diagnostic;
use crate::saga::action::ActionError;
use crate::saga::engine::RegisterError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: a trip field (runType, tripID, a city, a time, the payment) is
    /// not acceptable; the message names it.
    #[error("{0}")]
    InvalidTrip(String),

    /// 400: a saga's id or input does not fit its definition; the message
    /// names each field.
    #[error("{0}")]
    InvalidInput(String),

    /// 400: a query parameter (wait, status, limit, before, version) is not
    /// acceptable.
    #[error("{0}")]
    InvalidQuery(String),

    /// 400: the body is not a definition document (syntax or shape).
    #[error("{0}")]
    MalformedDefinition(String),

    /// 422: the definition has errors; the body lists the diagnostics.
    #[error("the definition has errors; fix each diagnostic and send it again")]
    InvalidDefinition(Vec<Diagnostic>),

    /// 409: the trip has a saga already, started with other input.
    #[error("trip {trip_id} was started with different {}", fields.join(", "))]
    Conflict {
        trip_id: String,
        fields: Vec<String>,
    },

    /// 409: the saga id is taken (other input, another definition), or a
    /// definition version exists with other content.
    #[error("{0}")]
    SagaConflict(String),

    /// 409: a definition version exists with other content.
    #[error("{0}")]
    DefinitionConflict(String),

    /// 404: no saga for this trip.
    #[error("no saga for trip {0}")]
    NotFound(String),

    /// 404: no saga, definition or version of that name; the message says
    /// which.
    #[error("{0}")]
    Missing(String),

    /// 409: the saga's state does not allow the operator's action.
    #[error("{0}")]
    ActionRefused(String),

    /// 503 with `Retry-After`: no slot for a new saga; nothing was written.
    #[error(transparent)]
    Overloaded(#[from] crate::saga::admission::Overloaded),

    /// 429 with `Retry-After`: the client sent more starts than
    /// `START_RATE_PER_CLIENT`; nothing was written.
    #[error(transparent)]
    TooManyStarts(#[from] crate::saga::admission::TooManyStarts),

    /// 503 when the database is unreachable or does not answer (retry
    /// later), else 500; logged, answered opaquely.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

    /// 503 when the database is unreachable (retry later), else 500; logged.
    #[error(transparent)]
    Write(#[from] crate::saga::writer::WriteError),
}

impl From<ActionError> for Error {
    fn from(err: ActionError) -> Self {
        match err {
            ActionError::Missing(message) => Error::Missing(message),
            ActionError::Refused(message) => Error::ActionRefused(message),
            ActionError::Overloaded(overloaded) => Error::Overloaded(overloaded),
            ActionError::Database(err) => Error::Database(err),
        }
    }
}

impl From<RegisterError> for Error {
    fn from(err: RegisterError) -> Self {
        match err {
            RegisterError::Invalid(diagnostics) => Error::InvalidDefinition(diagnostics),
            conflict @ RegisterError::Conflict { .. } => {
                Error::DefinitionConflict(conflict.to_string())
            }
            RegisterError::Database(err) => Error::Database(err),
        }
    }
}

/// The error body of a refused definition: the usual two fields and the
/// diagnostics.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DiagnosticsBody<'a> {
    error: &'static str,
    message: String,
    /// Each finding, when the document has errors (`invalid_definition`);
    /// absent when the body itself does not fit (`invalid_body`).
    #[schema(value_type = Vec<Diagnostic>, required = false)]
    diagnostics: &'a [Diagnostic],
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match &self {
            Error::InvalidTrip(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_trip", message),
            ),
            Error::InvalidInput(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_input", message),
            ),
            Error::InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_query", message),
            ),
            Error::MalformedDefinition(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("malformed_definition", message),
            ),
            Error::InvalidDefinition(diagnostics) => {
                let body = DiagnosticsBody {
                    error: "invalid_definition",
                    message,
                    diagnostics,
                };
                return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
            }
            Error::Conflict { .. } => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "trip_conflict",
                    format!("{message}; send the same input to see that saga, or use a new tripID"),
                ),
            ),
            Error::SagaConflict(_) => (
                StatusCode::CONFLICT,
                ErrorBody::new("saga_conflict", message),
            ),
            Error::DefinitionConflict(_) => (
                StatusCode::CONFLICT,
                ErrorBody::new("definition_conflict", message),
            ),
            Error::NotFound(_) => (
                StatusCode::NOT_FOUND,
                ErrorBody::new(
                    "not_found",
                    format!("{message}; start it with GET /trip or POST /trips"),
                ),
            ),
            Error::Missing(_) => (StatusCode::NOT_FOUND, ErrorBody::new("not_found", message)),
            Error::ActionRefused(_) => (
                StatusCode::CONFLICT,
                ErrorBody::new("action_refused", message),
            ),
            Error::Overloaded(_) => {
                let mut response = ErrorBody::new("overloaded", message)
                    .into_response_with(StatusCode::SERVICE_UNAVAILABLE);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            Error::TooManyStarts(too_many) => {
                let retry_after = HeaderValue::from(too_many.retry_after_secs);
                let mut response = ErrorBody::new("too_many_starts", message)
                    .into_response_with(StatusCode::TOO_MANY_REQUESTS);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after);
                return response;
            }
            Error::Database(err) if common::db::is_outage(err) => {
                tracing::warn!(%err, "database unavailable");
                unavailable()
            }
            Error::Database(err) => return common::error::internal(err),
            Error::Write(err) if err.outage => {
                tracing::warn!(%err, "database unavailable");
                unavailable()
            }
            Error::Write(err) => return common::error::internal(err),
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
