//! The travel saga as a Restate service: the benchmark's Restate peer.
//!
//! `TripSaga/run` takes `{"trip_id": "...", "run_type": "success"}` and runs
//! the five forward steps of /work/shared/design.md against our participant
//! services over plain HTTP, each call inside its own `ctx.run` (so Restate
//! journals its answer), with the same bodies, paths and `Idempotency-Key:
//! <trip_id>:<step>` headers as our orchestrator. A business failure (a 4xx
//! other than 408 and 429) ends the forward walk at once; a transient failure
//! (408, 429, 5xx, a timeout or a connection error) is returned from `ctx.run`
//! as a retryable error, so Restate retries it, at most four attempts in all
//! (our orchestrator's `STEP_MAX_ATTEMPTS`), after which the step counts as
//! failed. A failed step is treated as possibly done, as our orchestrator
//! does: its own compensation runs, then every earlier one, newest first,
//! each in its own `ctx.run`, retried until it succeeds.
//!
//! The answer is `{"trip_id", "status": "succeeded" | "failed", "steps"}`,
//! `steps` being the step names that ran, in order.
//!
//! The HTTP/2 (h2c) endpoint is served by our own accept loop rather than
//! `restate_sdk::http_server::HttpServer`, so that every accepted socket gets
//! `TCP_NODELAY`: without it each journal round trip between the server and
//! this service waits on Nagle's algorithm and delayed ACKs (about 40 ms).
//!
//! Env: `LISTEN_ADDR` (127.0.0.1:9080), `FLIGHTS_URL`, `CARS_URL`,
//! `PAYMENTS_URL` (http://127.0.0.1:8081, :8082, :8083), `RUST_LOG`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use restate_sdk::hyper::HyperEndpoint;
use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The trip as the saga takes it; every other field takes the sample's value.
#[derive(Debug, Deserialize)]
struct TripRequest {
    trip_id: String,
    #[serde(default = "default_run_type")]
    run_type: String,
}

fn default_run_type() -> String {
    "success".to_owned()
}

#[derive(Debug, Serialize)]
struct TripOutcome {
    trip_id: String,
    status: &'static str,
    steps: Vec<&'static str>,
}

/// Why a participant call did not succeed.
enum CallFailure {
    /// 408, 429, 5xx, a timeout, a connection error or an unreadable 2xx.
    Transient(String),
    /// Any other 4xx: the participant's final word.
    Business(u16, String),
}

struct TripSaga {
    http: reqwest::Client,
    flights: String,
    cars: String,
    payments: String,
}

impl TripSaga {
    /// One attempt of one participant call.
    async fn post(&self, url: &str, key: &str, body: &Value) -> Result<Value, CallFailure> {
        let response = self
            .http
            .post(url)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .map_err(|err| CallFailure::Transient(format!("{url}: {err}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| CallFailure::Transient(format!("{url}: {err}")))?;
        if status.is_success() {
            return match serde_json::from_slice::<Value>(&bytes) {
                Ok(answer) if answer.is_object() => Ok(answer),
                _ => Err(CallFailure::Transient(format!(
                    "{url}: unreadable {status} answer"
                ))),
            };
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(CallFailure::Transient(format!("{url}: {status} {text}")))
        } else {
            Err(CallFailure::Business(status.as_u16(), text))
        }
    }

    /// A forward step: its answer, or the terminal error that ended it (a
    /// business failure, or transient failures until the attempts ran out).
    async fn forward(
        &self,
        ctx: &Context<'_>,
        trip_id: &str,
        step: &'static str,
        url: String,
        body: Value,
    ) -> Result<Value, TerminalError> {
        let key = format!("{trip_id}:{step}");
        let answer = ctx
            .run(|| async {
                match self.post(&url, &key, &body).await {
                    Ok(answer) => Ok(Json(answer)),
                    Err(CallFailure::Business(status, text)) => {
                        Err(TerminalError::new_with_code(status, text).into())
                    }
                    Err(CallFailure::Transient(message)) => Err(HandlerError::from(message)),
                }
            })
            .name(step)
            .retry_policy(
                RunRetryPolicy::new()
                    .initial_delay(Duration::from_millis(100))
                    .exponentiation_factor(2.0)
                    .max_delay(Duration::from_secs(2))
                    .max_attempts(4),
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// A compensation: cannot fail for business reasons, so every failure,
    /// a 4xx included, is retried until it succeeds.
    async fn compensate(
        &self,
        ctx: &Context<'_>,
        trip_id: &str,
        step: &'static str,
        url: String,
        body: Value,
    ) -> Result<(), TerminalError> {
        let key = format!("{trip_id}:{step}");
        ctx.run(|| async {
            match self.post(&url, &key, &body).await {
                Ok(_) => Ok(()),
                Err(CallFailure::Business(status, text)) => {
                    Err(HandlerError::from(format!("{url}: {status} {text}")))
                }
                Err(CallFailure::Transient(message)) => Err(HandlerError::from(message)),
            }
        })
        .name(step)
        .retry_policy(
            RunRetryPolicy::new()
                .initial_delay(Duration::from_millis(100))
                .exponentiation_factor(2.0)
                .max_delay(Duration::from_secs(10)),
        )
        .await
    }
}

#[restate_sdk::service]
impl TripSaga {
    #[handler]
    async fn run(
        &self,
        ctx: Context<'_>,
        Json(trip): Json<TripRequest>,
    ) -> HandlerResult<Json<TripOutcome>> {
        let id = trip.trip_id.as_str();
        let run_type = trip.run_type.as_str();
        let (flights, cars, payments) = (&self.flights, &self.cars, &self.payments);
        let mut steps = Vec::new();
        // How many forward steps may have had an effect: the ones done and
        // the one that failed. The compensations of the first three undo them.
        let mut touched = 0;

        let outcome: Result<(), TerminalError> = async {
            touched = 1;
            steps.push("ReserveFlight");
            let flight = self
                .forward(
                    &ctx,
                    id,
                    "ReserveFlight",
                    format!("{flights}/reservations"),
                    json!({ "trip_id": id, "depart_city": "Detroit", "depart_time": "2021-07-07T06:00:00Z",
                            "arrive_city": "Frankfurt", "arrive_time": "2021-07-09T08:00:00Z",
                            "run_type": run_type }),
                )
                .await?;
            touched = 2;
            steps.push("ReserveCarRental");
            let car = self
                .forward(
                    &ctx,
                    id,
                    "ReserveCarRental",
                    format!("{cars}/rentals"),
                    json!({ "trip_id": id, "rental": "BMW", "rental_from": "2021-07-09T00:00:00Z",
                            "rental_to": "2021-07-17T00:00:00Z", "run_type": run_type }),
                )
                .await?;
            touched = 3;
            steps.push("ProcessPayment");
            self.forward(
                &ctx,
                id,
                "ProcessPayment",
                format!("{payments}/payments"),
                json!({ "trip_id": id, "amount": "750.00", "currency": "USD",
                        "flight_booking_id": flight["booking_id"], "car_booking_id": car["booking_id"],
                        "run_type": run_type }),
            )
            .await?;
            steps.push("ConfirmFlight");
            self.forward(
                &ctx,
                id,
                "ConfirmFlight",
                format!("{flights}/reservations/{id}/confirm"),
                json!({ "booking_id": flight["booking_id"], "run_type": run_type }),
            )
            .await?;
            steps.push("ConfirmCarRental");
            self.forward(
                &ctx,
                id,
                "ConfirmCarRental",
                format!("{cars}/rentals/{id}/confirm"),
                json!({ "booking_id": car["booking_id"], "run_type": run_type }),
            )
            .await?;
            Ok(())
        }
        .await;

        if outcome.is_ok() {
            return Ok(Json(TripOutcome {
                trip_id: trip.trip_id,
                status: "succeeded",
                steps,
            }));
        }
        let plain = json!({ "run_type": run_type });
        let compensations = [
            (
                "CancelFlightReservation",
                format!("{flights}/reservations/{id}/cancel"),
            ),
            (
                "CancelRentalReservation",
                format!("{cars}/rentals/{id}/cancel"),
            ),
            ("RefundPayment", format!("{payments}/payments/{id}/refund")),
        ];
        for (step, url) in compensations.into_iter().take(touched).rev() {
            steps.push(step);
            self.compensate(&ctx, id, step, url, plain.clone()).await?;
        }
        Ok(Json(TripOutcome {
            trip_id: trip.trip_id,
            status: "failed",
            steps,
        }))
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let listen = env_or("LISTEN_ADDR", "127.0.0.1:9080");
    let listen: SocketAddr = listen.parse().unwrap_or_else(|err| {
        eprintln!("LISTEN_ADDR={listen:?} is not an address such as 127.0.0.1:9080: {err}");
        std::process::exit(2);
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("the HTTP client builds");
    let saga = TripSaga {
        http,
        flights: env_or("FLIGHTS_URL", "http://127.0.0.1:8081"),
        cars: env_or("CARS_URL", "http://127.0.0.1:8082"),
        payments: env_or("PAYMENTS_URL", "http://127.0.0.1:8083"),
    };
    let endpoint = HyperEndpoint::new(Endpoint::builder().bind(saga).build());

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|err| {
            eprintln!("cannot listen on LISTEN_ADDR={listen}: {err}");
            std::process::exit(1);
        });
    tracing::info!("restate-trip listening on {listen}");
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY for {remote}: {err}");
        }
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let connection = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), endpoint);
            if let Err(err) = connection.await {
                tracing::warn!("connection from {remote}: {err}");
            }
        });
    }
}
