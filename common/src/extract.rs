//! Extractors that answer a bad request with the same JSON error body as the
//! handlers do, instead of axum's plain-text rejections.

use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ErrorBody;

/// `axum::Json`, with JSON error bodies: malformed JSON is a 400, a body of
/// the wrong shape (missing field, wrong type) a 422, a wrong content type a 415.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(Rejection))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with a 400 JSON error body.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Rejection))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, with a 400 JSON error body.
#[derive(Debug, Clone, Copy, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Rejection))]
pub struct Path<T>(pub T);

use axum::extract::FromRequestParts;

/// A request the extractors refused, answered as a JSON error body.
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    body: ErrorBody,
}

impl From<JsonRejection> for Rejection {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code, hint) = match &rejection {
            JsonRejection::JsonDataError(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "fix the field named above and send the request again",
            ),
            JsonRejection::JsonSyntaxError(_) => (
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "send a valid JSON object",
            ),
            JsonRejection::MissingJsonContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body with `Content-Type: application/json`",
            ),
            _ => (
                rejection.status(),
                "invalid_body",
                "send a JSON object within the size limit",
            ),
        };
        Self {
            status,
            body: ErrorBody::new(code, format!("{}; {hint}", rejection.body_text())),
        }
    }
}

impl From<QueryRejection> for Rejection {
    fn from(rejection: QueryRejection) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::new("invalid_query", rejection.body_text()),
        }
    }
}

impl From<PathRejection> for Rejection {
    fn from(rejection: PathRejection) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::new("invalid_path", rejection.body_text()),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        self.body.into_response_with(self.status)
    }
}
