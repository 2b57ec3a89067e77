//! Traces: the four real binaries, each exporting its spans over OTLP/HTTP
//! to a receiver here, make one trace of one trip, the participants
//! continuing the trace the orchestrator's calls carry.
//!
//! The services run as processes (built beside this test by `cargo test
//! --workspace`): a process has one tracer, with one `service.name`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use testkit::TestDb;
use testkit::procs::{Service, free_port, service_bin_dir};

/// A span as received: its service, name and trace id (hex).
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// `POST /v1/traces`, as an OTLP/HTTP collector answers it.
async fn collect(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

#[tokio::test]
async fn one_trip_is_one_trace_across_the_four_services() {
    let db = TestDb::new().await;
    let spans = Spans::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", receiver.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(Arc::clone(&spans));
    tokio::spawn(async move { axum::serve(receiver, app).await });

    let bin_dir = service_bin_dir(Path::new(env!("CARGO_BIN_EXE_cluster")).parent())
        .expect("the service binaries, built by cargo test --workspace");
    let logs = std::env::temp_dir().join(format!("traces-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port().unwrap()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let names = ["orchestrator", "flights-svc", "cars-svc", "payments-svc"];
    let http = reqwest::Client::new();
    let mut services = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), db.url().to_owned()),
            ("LISTEN_ADDR".to_owned(), format!("127.0.0.1:{}", ports[i])),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ];
        if i == 0 {
            env.push(("LOG_FORMAT".to_owned(), "json".to_owned()));
            env.push(("RUST_LOG".to_owned(), "info".to_owned()));
            for (j, var) in ["FLIGHTS_URL", "CARS_URL", "PAYMENTS_URL"]
                .iter()
                .enumerate()
            {
                env.push(((*var).to_owned(), url(j + 1)));
            }
        }
        let mut service = Service::new(&bin_dir, name, (*name).to_owned(), url(i), env, &logs);
        service.start().unwrap();
        services.push(service);
    }
    for service in &mut services {
        service
            .wait_ready(&http, Duration::from_secs(30))
            .await
            .unwrap();
    }

    let trip: serde_json::Value = http
        .get(format!("{}/trip?tripID=traced&runType=failPayment", url(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trip["status"], "failed", "{trip}");

    let steps = [
        "ReserveFlight",
        "ReserveCarRental",
        "ProcessPayment",
        "RefundPayment",
        "CancelRentalReservation",
        "CancelFlightReservation",
    ];
    let (trace, services_seen, names_seen) = testkit::eventually(
        "every service's spans of the trip",
        Duration::from_secs(20),
        || async {
            let spans = spans.lock().unwrap().clone();
            let trace = spans
                .iter()
                .find(|s| s.service == "orchestrator" && s.name == "ProcessPayment")?
                .trace_id
                .clone();
            let of_trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace).collect();
            let services: BTreeSet<String> = of_trace.iter().map(|s| s.service.clone()).collect();
            let names: BTreeSet<String> = of_trace
                .iter()
                .filter(|s| s.service == "orchestrator")
                .map(|s| s.name.clone())
                .collect();
            // The saga's own span ends last, so it may come in a later batch.
            let all = steps
                .iter()
                .chain(&["saga travel"])
                .all(|n| names.contains(*n));
            (services.len() == 4 && all).then_some((trace, services, names))
        },
    )
    .await;
    assert_eq!(
        services_seen.into_iter().collect::<Vec<_>>(),
        ["cars-svc", "flights-svc", "orchestrator", "payments-svc"]
    );
    assert!(names_seen.contains("saga travel"), "{names_seen:?}");
    assert_ne!(trace, "0".repeat(32));
    for service in &mut services {
        service.kill().await;
    }

    // The orchestrator's JSON log lines about the saga carry its id and its
    // trace id.
    let log = std::fs::read_to_string(logs.join("orchestrator.log")).unwrap();
    let ended = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "saga ended")
        .unwrap_or_else(|| panic!("no JSON line says the saga ended: {log}"));
    assert_eq!(ended["span"]["saga_id"], "traced", "{ended}");
    assert_eq!(ended["span"]["trace_id"], trace.as_str(), "{ended}");
    let _ = std::fs::remove_dir_all(&logs);
}
