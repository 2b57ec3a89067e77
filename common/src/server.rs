//! Serving a router: the standard middleware stack (request ids, tracing,
//! panics caught, body limit, time limit), JSON answers for unknown routes,
//! and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
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
            .layer(CatchPanicLayer::custom(panicked))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                request_timeout,
            ))
            .layer(RequestBodyLimitLayer::new(BODY_LIMIT)),
    )
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
/// middleware on `listener` until `shutdown` completes.
pub async fn run_participant(
    config: &crate::config::CommonConfig,
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
    let metrics = Metrics::new(registry);
    let router = with_middleware(app(db, counted), &metrics, Duration::from_secs(30));
    serve(listener, router, shutdown).await?;
    Ok(())
}
