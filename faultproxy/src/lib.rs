//! A fault proxy: it sits between the orchestrator and one participant and,
//! at configurable rates drawn from a seeded generator, delays a request,
//! forwards it and loses the response, sends it twice, answers 503 without
//! forwarding, or breaks the connection without forwarding. A hold rule keeps
//! matching requests (or their responses) back until released, so that a
//! test can line up a crash or a late arrival exactly.
//!
//! `POST /_proxy/release` releases everything held; `GET /_proxy/stats`
//! counts what was done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Fault rates, each the probability that a request gets that fault. The
/// faults other than delay exclude each other; their rates must sum to at
/// most 1.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Faults {
    /// Seed of the fault draws.
    #[arg(long, env = "FAULT_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Share of requests delayed by `min_delay_ms` to `max_delay_ms` before
    /// forwarding.
    #[arg(long, default_value_t = 0.0)]
    pub delay_rate: f64,
    #[arg(long, default_value_t = 0)]
    pub min_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub max_delay_ms: u64,
    /// Share of requests forwarded whose response is then lost.
    #[arg(long, default_value_t = 0.0)]
    pub lose_response_rate: f64,
    /// Share of requests forwarded twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Share of requests answered 503 without forwarding.
    #[arg(long, default_value_t = 0.0)]
    pub unavailable_rate: f64,
    /// Share of requests whose connection is broken without forwarding.
    #[arg(long, default_value_t = 0.0)]
    pub reset_rate: f64,
}

/// When a held request is held: before it reaches the participant, or after
/// the participant answered (its effect done) but before the answer goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAt {
    Request,
    Response,
}

/// Hold the next `count` requests with this method whose path is exactly
/// `path`.
#[derive(Debug, Clone)]
pub struct Hold {
    pub path: String,
    pub at: HoldAt,
    pub count: usize,
}

/// What the proxy did, by fault.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub requests: AtomicU64,
    pub delayed: AtomicU64,
    pub lost_responses: AtomicU64,
    pub duplicated: AtomicU64,
    pub unavailable: AtomicU64,
    pub resets: AtomicU64,
    pub held: AtomicU64,
    /// Requests in the proxy now, and the most at once.
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
}

/// A fault to apply to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    LoseResponse,
    Duplicate,
    Unavailable,
    Reset,
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    hold: Mutex<Option<Hold>>,
    /// Bumped by each release; held requests wait for it to change.
    released: watch::Sender<u64>,
    holding: AtomicUsize,
    stats: Stats,
}

/// A running proxy. Dropping it stops it.
pub struct FaultProxy {
    pub url: String,
    inner: Arc<Inner>,
    _stop: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("url", &self.url)
            .finish()
    }
}

impl FaultProxy {
    /// Serves on `listener`, forwarding to `upstream`.
    pub fn start(listener: TcpListener, upstream: &str, faults: Faults) -> anyhow::Result<Self> {
        let url = format!("http://{}", listener.local_addr()?);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            rng: Mutex::new(StdRng::seed_from_u64(faults.seed)),
            faults: Mutex::new(faults),
            hold: Mutex::new(None),
            released: watch::channel(0).0,
            holding: AtomicUsize::new(0),
            stats: Stats::default(),
        });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let app = router(Arc::clone(&inner));
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        Ok(Self {
            url,
            inner,
            _stop: stop.drop_guard(),
        })
    }

    /// Holds the next matching requests until [`FaultProxy::release`].
    pub fn hold(&self, hold: Hold) {
        *self.inner.hold.lock().unwrap_or_else(|p| p.into_inner()) = Some(hold);
    }

    /// Applies `faults` to the requests from now on (the seed is kept).
    pub fn set_faults(&self, faults: Faults) {
        *self.inner.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Lets everything held go on, and holds nothing more.
    pub fn release(&self) {
        release(&self.inner);
    }

    /// How many requests are being held right now.
    pub fn holding(&self) -> usize {
        self.inner.holding.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }
}

fn release(inner: &Inner) {
    *inner.hold.lock().unwrap_or_else(|p| p.into_inner()) = None;
    inner.released.send_modify(|generation| *generation += 1);
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/_proxy/release", post(release_all))
        .route("/_proxy/stats", get(stats))
        .fallback(forward)
        .with_state(inner)
}

async fn release_all(State(inner): State<Arc<Inner>>) -> StatusCode {
    release(&inner);
    StatusCode::NO_CONTENT
}

async fn stats(State(inner): State<Arc<Inner>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::to_value(&inner.stats).unwrap_or_default())
}

impl Inner {
    /// Draws this request's fault and delay.
    fn draw(&self) -> (Fault, Option<Duration>) {
        let f = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let delay = (f.delay_rate > 0.0
            && rng.random::<f64>() < f.delay_rate
            && f.max_delay_ms > 0)
            .then(|| {
                let min = f.min_delay_ms.min(f.max_delay_ms);
                Duration::from_millis(rng.random_range(min..=f.max_delay_ms))
            });
        let roll: f64 = rng.random();
        let mut edge = 0.0;
        for (rate, fault) in [
            (f.lose_response_rate, Fault::LoseResponse),
            (f.duplicate_rate, Fault::Duplicate),
            (f.unavailable_rate, Fault::Unavailable),
            (f.reset_rate, Fault::Reset),
        ] {
            edge += rate;
            if roll < edge {
                return (fault, delay);
            }
        }
        (Fault::None, delay)
    }

    /// Whether this request is held, and where; counts it against the rule.
    fn take_hold(&self, path: &str) -> Option<HoldAt> {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        let rule = hold.as_mut()?;
        if rule.path != path || rule.count == 0 {
            return None;
        }
        rule.count -= 1;
        Some(rule.at)
    }

    async fn wait_release(&self) {
        let mut released = self.released.subscribe();
        self.holding.fetch_add(1, Ordering::SeqCst);
        self.stats.held.fetch_add(1, Ordering::Relaxed);
        let _ = released.changed().await;
        self.holding.fetch_sub(1, Ordering::SeqCst);
    }

    async fn send(
        &self,
        parts: &axum::http::request::Parts,
        body: &Bytes,
    ) -> Result<Response, reqwest::Error> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = self
            .client
            .request(parts.method.clone(), format!("{}{path}", self.upstream))
            .body(body.clone());
        for name in [
            header::CONTENT_TYPE.as_str(),
            common::wire::IDEMPOTENCY_KEY,
            "x-request-id",
            "traceparent",
            common::auth::KEY_ID,
            common::auth::TIMESTAMP,
            common::auth::NONCE,
            common::auth::SIGNATURE,
        ] {
            if let Some(value) = parts.headers.get(name) {
                request = request.header(name, value);
            }
        }
        let response = request.send().await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = response.bytes().await?;
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        Ok((status, headers, bytes).into_response())
    }
}

/// An answer whose body breaks after the headers: the client sees the
/// connection fail mid-response, and cannot know the outcome.
fn broken() -> Response {
    let body = Body::from_stream(futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("fault proxy: connection broken"))
    }));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Counts a request in the proxy for as long as it is there.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn enter(inner: &Arc<Inner>) -> Self {
        let now = inner.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        inner.stats.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Self(Arc::clone(inner))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    inner.stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::enter(&inner);
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, common::server::BODY_LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    // A request in the network goes on when its sender gives up: run it in
    // a task of its own, so that a client's timeout cannot cancel it.
    match tokio::spawn(deliver(inner, parts, body)).await {
        Ok(response) => response,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn deliver(inner: Arc<Inner>, parts: axum::http::request::Parts, body: Bytes) -> Response {
    let hold = inner.take_hold(parts.uri.path());
    if hold == Some(HoldAt::Request) {
        inner.wait_release().await;
    }
    let (fault, delay) = inner.draw();
    if let Some(delay) = delay {
        inner.stats.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
    match fault {
        Fault::Unavailable => {
            inner.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::SERVICE_UNAVAILABLE, "fault proxy: unavailable").into_response();
        }
        Fault::Reset => {
            inner.stats.resets.fetch_add(1, Ordering::Relaxed);
            return broken();
        }
        Fault::Duplicate => {
            inner.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            let _ = inner.send(&parts, &body).await;
        }
        Fault::None | Fault::LoseResponse => {}
    }
    let response = match inner.send(&parts, &body).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(%err, "upstream unreachable");
            return (StatusCode::BAD_GATEWAY, "fault proxy: upstream unreachable").into_response();
        }
    };
    if hold == Some(HoldAt::Response) {
        inner.wait_release().await;
    }
    if fault == Fault::LoseResponse {
        inner.stats.lost_responses.fetch_add(1, Ordering::Relaxed);
        return broken();
    }
    response
}
