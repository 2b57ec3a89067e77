//! Serving a router: the standard middleware stack (request ids, tracing,
//! panics caught, body limit, time limit), JSON answers for unknown routes,
//! and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ErrorBody;
use crate::metrics::{Metrics, ParticipantMetrics, Registry};

/// The largest request body any service accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Wraps `router` in the stack every service uses, `GET /metrics` and the
/// request metrics of `metrics` included. `request_timeout` bounds every
/// request, so that a graceful shutdown cannot hang on one.
pub fn with_middleware(router: Router, metrics: &Metrics, request_timeout: Duration) -> Router {
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    metrics.instrument(router).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let idempotency_key = req
                        .headers()
                        .get(crate::wire::IDEMPOTENCY_KEY)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let span = tracing::info_span!(
                        "request",
                        otel.name = %req.method(),
                        otel.kind = "server",
                        method = %req.method(),
                        uri = %req.uri(),
                        request_id,
                        idempotency_key,
                        trace_id = tracing::field::Empty,
                    );
                    // A participant call continues the saga's trace.
                    if let Some(trace_id) = crate::telemetry::continue_trace(&span, req.headers()) {
                        span.record("trace_id", trace_id);
                    }
                    span
                }),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::map_response(json_errors))
            .layer(axum::middleware::from_fn(refuse_control_in_url))
            .layer(CatchPanicLayer::custom(panicked))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                request_timeout,
            ))
            .layer(RequestBodyLimitLayer::new(BODY_LIMIT)),
    )
}

/// A URL whose path or query holds a control character (percent-encoded:
/// `%00`) is refused before any route sees it: nothing downstream can
/// store it, and a log line must not carry it.
async fn refuse_control_in_url(req: Request<Body>, next: Next) -> Response {
    let uri = req.uri();
    if let Some((place, c)) = crate::text::refused_in_url(uri.path(), uri.query()) {
        return ErrorBody::new(
            "control_character",
            format!(
                "the URL's {place} holds the control character {}; send it without control characters",
                crate::text::describe(c)
            ),
        )
        .into_response_with(StatusCode::BAD_REQUEST);
    }
    next.run(req).await
}

/// The answers the layers make themselves (a body too large, a request
/// that took too long) carry the JSON error body every handler's do.
async fn json_errors<B>(response: Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response.map(Body::new);
    }
    let body = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorBody::new(
            "body_too_large",
            format!(
                "the body is larger than the {BODY_LIMIT} bytes a request may carry; send less"
            ),
        ),
        StatusCode::REQUEST_TIMEOUT => ErrorBody::new(
            "request_timeout",
            "the request took longer than this service allows; try again, or wait less (`wait`)",
        ),
        _ => return response.map(Body::new),
    };
    body.into_response_with(status)
}

/// Serves `router` (already wrapped) on `listener` until `shutdown` completes,
/// then lets the requests in flight finish. Answers go out at once
/// (`TCP_NODELAY`), not held back for the client's acknowledgement.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn not_found() -> Response {
    ErrorBody::new("not_found", "no such route; see the README for the API")
        .into_response_with(StatusCode::NOT_FOUND)
}

async fn method_not_allowed() -> Response {
    ErrorBody::new(
        "method_not_allowed",
        "this route does not take that method; see the README for the API",
    )
    .into_response_with(StatusCode::METHOD_NOT_ALLOWED)
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ErrorBody::new(
        "internal",
        "the service failed to handle the request; try again later",
    )
    .into_response_with(StatusCode::INTERNAL_SERVER_ERROR)
    .into_response()
}

/// The whole life of a participant service: connect to its database inside
/// `schema`, apply `migrator`, then serve `app(db)` with the standard
/// middleware, each call's signature checked when `auth` gives keys, on
/// `listener` until `shutdown` completes.
pub async fn run_participant(
    config: &crate::config::CommonConfig,
    auth: &crate::auth::ParticipantAuth,
    schema: &'static str,
    migrator: sqlx::migrate::Migrator,
    app: impl FnOnce(crate::db::Db, ParticipantMetrics) -> Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool =
        crate::db::connect_and_migrate(&config.database_url, schema, migrator, config.pool())
            .await?;
    let db = crate::db::Db::new(pool).with_query_timeout(config.query_timeout());
    let mut registry = Registry::default();
    let counted = ParticipantMetrics::new(&mut registry);
    let mut router = app(db, counted);
    match &auth.auth_keys {
        Some(keys) => {
            let keys =
                crate::auth::parse_keys(keys).map_err(|err| anyhow::anyhow!("AUTH_KEYS: {err}"))?;
            router = crate::auth::Verifier::new(keys, &mut registry).layer(router);
        }
        None => tracing::warn!(
            "AUTH_KEYS is not set: this participant takes calls from anyone, not only the orchestrator"
        ),
    }
    let metrics = Metrics::new(registry);
    let router = with_middleware(router, &metrics, Duration::from_secs(30));
    serve(listener, router, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `router` with the standard middleware and a `timeout` on
    /// port 0, sends `request` as it is, and answers the raw answer.
    async fn exchange(router: Router, timeout: Duration, request: &str) -> String {
        let router = with_middleware(router, &Metrics::new(Registry::default()), timeout);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, std::future::pending()));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_request_that_takes_too_long_gets_a_408_json_error() {
        let slow = Router::new().route(
            "/slow",
            get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }),
        );
        let answer = exchange(
            slow,
            Duration::from_millis(50),
            "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    }

    #[tokio::test]
    async fn a_body_said_too_large_gets_a_413_json_error_unread() {
        let echo = Router::new().route("/in", axum::routing::post(|body: String| async { body }));
        let request = format!(
            "POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            BODY_LIMIT + 1
        );
        let answer = exchange(echo, Duration::from_secs(5), &request).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"error\":\"body_too_large\""), "{answer}");
    }
}
