//! Prometheus metrics (the prometheus-client crate, the Prometheus
//! project's own): a registry per service instance, not a global one, so
//! that services sharing a process (the native runner, the tests) keep their
//! figures apart; every service's HTTP request metrics; and `GET /metrics`
//! in the Prometheus text format. Label values are bounded: routes as
//! matched (`/reservations/{trip_id}`, never the id), methods, status codes.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
pub use prometheus_client::registry::Registry;

/// Latency buckets in seconds: 0.5 ms to about 16 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A family of latency histograms by `S`.
pub type Latencies<S> = Family<S, Histogram, fn() -> Histogram>;

/// A new family of latency histograms.
pub fn latencies<S: Clone + std::hash::Hash + Eq>() -> Latencies<S> {
    Family::new_with_constructor(latency_histogram)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Route,
    status: u16,
}

/// The route a request matched, as a label value: the router's own shared
/// string, cloned without a copy (a request's labels are built for every
/// request, refusals under overload included).
#[derive(Debug, Clone)]
struct Route(Option<MatchedPath>);

impl Route {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A service's metrics: its registry, frozen once every metric is in it,
/// and its HTTP request metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Latencies<RequestLabels>,
}

impl Metrics {
    /// Adds the HTTP request metrics to `registry` (which holds the
    /// service's own) and freezes it.
    pub fn new(mut registry: Registry) -> Self {
        // One histogram per method, route and status: its count is the
        // requests answered, so one lookup a request serves both.
        let requests = latencies();
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route and status (its _count: the requests)",
            requests.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
        }
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// `router` with `GET /metrics` added and every request counted and
    /// timed (by the route it matched; `unmatched` for the fallback).
    pub fn instrument(&self, router: Router) -> Router {
        let metrics = self.clone();
        router
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
                            metrics.render(),
                        )
                            .into_response()
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(self.clone(), track))
    }
}

/// What a participant counts beyond its requests: the calls answered by
/// replaying a key's first answer, and the tombstones its cancels (refunds)
/// wrote for a trip it had never seen.
#[derive(Debug, Clone, Default)]
pub struct ParticipantMetrics {
    pub replays: Counter,
    pub tombstones: Counter,
}

impl ParticipantMetrics {
    /// New counters, added to `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "idempotent_replays",
            "Calls answered with the first answer of their Idempotency-Key, with no second effect",
            metrics.replays.clone(),
        );
        registry.register(
            "tombstones_written",
            "Cancels (refunds) of a trip never seen, which wrote a row that refuses a late reserve (charge)",
            metrics.tombstones.clone(),
        );
        metrics
    }
}

/// A method as a bounded label value.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = Route(request.extensions().get::<MatchedPath>().cloned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}
