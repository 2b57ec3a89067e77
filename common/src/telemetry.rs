//! Logs and traces: a `tracing` registry with an `EnvFilter` (from
//! `RUST_LOG`, default `info`), a human or JSON formatter, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry layer that exports
//! the spans over OTLP/HTTP (protobuf) with the standard `OTEL_*` settings.
//!
//! Trace context travels as a W3C `traceparent` header: [`inject`] puts the
//! current span's into a participant call, [`continue_trace`] makes a
//! request's span continue the one it was sent. With no endpoint set,
//! nothing is exported and both do nothing.

use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format, chosen with `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The exporting provider, once traces are on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber for the binary `service` (its
/// `service.name` in traces). A second call (several services hosted in
/// one process) keeps the first.
pub fn init(format: LogFormat, service: &'static str) {
    // RUST_LOG filters the logs only: the spans exported are the `info`
    // ones, whatever the logs show.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A request's own text (a path segment, a body field) is logged with
    // `?`, which escapes newlines, so that it cannot forge a log line; JSON
    // lines escape every control character.
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let mut layers = vec![logs.with_filter(filter).boxed()];
    if let Some(tracer) = tracer(service) {
        let traces = tracing_opentelemetry::layer().with_tracer(tracer);
        layers.push(traces.with_filter(EnvFilter::new("info")).boxed());
    }
    let _already_set = tracing_subscriber::registry().with(layers).try_init();
}

/// The OTLP exporting tracer, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
/// traces-only form) is set. The batch processor exports from a thread of
/// its own, with the blocking client, so that no call waits for it.
fn tracer(service: &'static str) -> Option<opentelemetry_sdk::trace::SdkTracer> {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    if PROVIDER.get().is_some() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(err) => {
            // Before the subscriber: this goes to stderr as it is.
            eprintln!("traces are off: cannot build the OTLP exporter: {err}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(service);
    PROVIDER.set(provider).ok()?;
    Some(tracer)
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Exports the spans still buffered and stops the exporter; blocks up to a
/// few seconds. Call it once, as the process ends.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(err) = provider.shutdown()
    {
        eprintln!("cannot flush the last spans: {err}");
    }
}

/// Adds the current span's `traceparent` to `headers`.
pub fn inject(headers: &mut axum::http::HeaderMap) {
    if !enabled() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` continue the trace `headers` carry (a `traceparent`), and
/// returns its trace id, when traces are on.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) -> Option<String> {
    if !enabled() {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only if the span has started already, or traces are off.
        let _ = span.set_parent(parent);
    }
    trace_id(span)
}

/// The trace id of `span`, when traces are on.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let id = context.span().span_context().trace_id();
    Some(id.to_string())
}
