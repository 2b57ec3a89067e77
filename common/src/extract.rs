//! Extractors that answer a bad request with the same JSON error body as the
//! handlers do, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::{
    JsonRejection, MissingJsonContentType, PathRejection, QueryRejection,
};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;

/// `axum::Json`, with JSON error bodies: malformed JSON is a 400, a body of
/// the wrong shape (missing field, wrong type) a 422, a wrong content type a
/// 415, a body too large a 413; and a control character in any string or
/// key ([`crate::text`]) a 400 naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Rejection> {
        if !json_content_type(req.headers()) {
            return Err(JsonRejection::from(MissingJsonContentType::default()).into());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|err| Rejection::from(JsonRejection::from(err)))?;
        if crate::text::may_hold_refused(&bytes)
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some((path, c)) = crate::text::refused_in(&value)
        {
            let field = if path.is_empty() {
                "the body".to_owned()
            } else {
                format!("field {path}")
            };
            return Err(Rejection {
                status: StatusCode::BAD_REQUEST,
                body: ErrorBody::new(
                    "control_character",
                    format!(
                        "{field} holds the control character {}; send text without control characters (tab and line breaks aside)",
                        crate::text::describe(c)
                    ),
                ),
            });
        }
        axum::Json::from_bytes(&bytes)
            .map(|axum::Json(value)| Json(value))
            .map_err(Rejection::from)
    }
}

/// Whether the request says its body is JSON (`application/json`, or a
/// `+json` type), as `axum::Json` asks.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(mime) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let mime = mime.trim().to_ascii_lowercase();
    let Some((kind, subtype)) = mime.split_once('/') else {
        return false;
    };
    kind == "application" && (subtype == "json" || subtype.ends_with("+json"))
}

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
