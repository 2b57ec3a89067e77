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

/// A log writer that keeps each event on one line, whatever its fields
/// hold: the formatter writes an event at once, ending in a line break, and
/// every other control character in it (a line break in a participant's
/// error text, a carriage return, a NUL) is written escaped (`\n`,
/// `\u{0}`), so that no value a request or a participant sent can forge a
/// log line. Tab stays, and so does ESC: the formatter colours with it,
/// and escapes it itself in the values it writes; it does not escape line
/// breaks.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        if !body.iter().copied().any(escaped) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        self.0.write_all(&escape_controls(body))?;
        self.0.write_all(end)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Whether [`OneLine`] writes `b` escaped.
fn escaped(b: u8) -> bool {
    b.is_ascii_control() && b != b'\t' && b != 0x1b
}

/// `bytes` with each byte [`escaped`] says written as an escape.
fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b if escaped(b) => out.extend_from_slice(format!("\\u{{{b:x}}}").as_bytes()),
            b => out.push(b),
        }
    }
    out
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
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(|| OneLine(std::io::stdout()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(|| OneLine(std::io::stdout()))
            .boxed(),
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn written(event: &[u8]) -> String {
        let mut out = OneLine(Vec::new());
        out.write_all(event).unwrap();
        String::from_utf8(out.0).unwrap()
    }

    #[test]
    fn a_field_holding_a_line_break_stays_on_its_event_line() {
        assert_eq!(
            written(b"WARN attempt failed error=\"no\nINFO forged\r\"\n"),
            "WARN attempt failed error=\"no\\nINFO forged\\r\"\n"
        );
        assert_eq!(
            written(b"a\x00b\x7f\x1b[2m\tc\n"),
            "a\\u{0}b\\u{7f}\x1b[2m\tc\n"
        );
        assert_eq!(written(b"plain line\n"), "plain line\n");
    }
}
