//! The JSON error body that every service answers with:
//! `{"error": "<code>", "message": "<what to do>"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The body of every error answer, in every service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `trip_conflict`.
    pub error: String,
    /// What went wrong and what to do about it, for a person.
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }

    /// The answer: this body with `status`.
    pub fn into_response_with(self, status: StatusCode) -> Response {
        (status, Json(self)).into_response()
    }
}

/// The answer for an unexpected failure: logged with its whole cause chain,
/// answered as an opaque 500 so that nothing internal leaks to the caller.
pub fn internal(err: &(dyn std::error::Error + 'static)) -> Response {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = chain, "request failed");
    ErrorBody::new(
        "internal",
        "the service failed to handle the request; it was logged, try again later",
    )
    .into_response_with(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The answer when the database does not answer: 503, retry later.
pub fn database_unavailable() -> Response {
    ErrorBody::new(
        "database_unavailable",
        "the database does not answer; retry later",
    )
    .into_response_with(StatusCode::SERVICE_UNAVAILABLE)
}
