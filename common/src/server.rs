//! Serving a router: the standard middleware stack (request ids, tracing,
//! panics caught, body limit, time limit), JSON answers for unknown routes,
//! and graceful shutdown.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
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

/// What one server lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once. The next client waits in the listen
    /// backlog until one closes, so a flood of connections costs the
    /// service neither memory nor file descriptors beyond this.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted
    /// from when the connection is ready for them: a slow client (one
    /// byte a minute) is cut off, and so is a keep-alive connection left
    /// idle for longer.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` (already wrapped) on `listener` within `limits` until
/// `shutdown` completes, then lets the requests in flight finish. Answers
/// go out at once (`TCP_NODELAY`), not held back for the client's
/// acknowledgement. Each request carries its client's address
/// (`ConnectInfo<SocketAddr>`).
///
/// hyper's own connection loop rather than `axum::serve`, which sets no
/// header read timeout and accepts every connection it is offered.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY on a connection");
        }
        let service = router.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(client));
            req
        });
        let connection = connections
            .watch(http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "connection closed on an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// A failed accept: one connection's trouble (reset before it was
/// accepted) is skipped; anything else (out of file descriptors) is logged
/// and waited out, as `axum::serve` does, rather than spun on.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%err, "cannot accept a connection; trying again in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    serve(listener, router, config.limits(), shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `router` with the standard middleware, a `timeout` and
    /// `limits` on port 0; answers its address.
    async fn start(router: Router, timeout: Duration, limits: Limits) -> std::net::SocketAddr {
        let router = with_middleware(router, &Metrics::new(Registry::default()), timeout);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        address
    }

    /// Serves `router` with the standard middleware and a `timeout` on
    /// port 0, sends `request` as it is, and answers the raw answer.
    async fn exchange(router: Router, timeout: Duration, request: &str) -> String {
        let address = start(router, timeout, Limits::default()).await;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Reads from `stream` until an HTTP answer's head has come.
    async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
        let mut answer = Vec::new();
        let mut buf = [0; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_client_slow_to_send_its_headers_is_cut_off() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let ok = Router::new().route("/", get(|| async { "ok" }));
        let address = start(ok, Duration::from_secs(30), limits).await;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // The rest of the headers never comes: the server closes the
        // connection (the bound only keeps a broken server from hanging
        // the test).
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server kept a client that never finished its headers")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("200 OK"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let ok = Router::new().route("/", get(|| async { "ok" }));
        let address = start(ok, Duration::from_secs(30), limits).await;
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

        let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
        first.write_all(request).await.unwrap();
        assert!(read_head(&mut first).await.starts_with("HTTP/1.1 200"));

        // The first connection is kept alive and holds the only slot: the
        // second is not served while it is open...
        let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
        second.write_all(request).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), read_head(&mut second)).await;
        assert!(waited.is_err(), "served beyond the limit: {waited:?}");

        // ...and is, once it closes.
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(10), read_head(&mut second))
            .await
            .expect("the second connection was never served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
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
