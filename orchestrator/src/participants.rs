//! The HTTP client for the participants: builds each call from the saga
//! definition, sends it with its idempotency key, and sorts the answer into
//! success, transient failure (retry) or business failure (final).

use std::sync::Arc;
use std::time::Duration;

use common::wire::IDEMPOTENCY_KEY;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::saga::Trip;
use crate::saga::definition::{Action, Outputs, Participant};

/// Why a call did not succeed, with what to record in `saga_log`.
#[derive(Debug, Clone)]
pub struct CallFailure {
    /// Retrying may help: a timeout, a connection error, 408, 429 or 5xx.
    pub transient: bool,
    /// The participant's answer or the error, as recorded.
    pub detail: Value,
}

/// A turn to call a participant: one of its `PARTICIPANT_MAX_IN_FLIGHT`
/// calls in flight, given back when dropped.
#[derive(Debug)]
pub struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

/// The participants' base URLs, one shared, pooled HTTP client, and a bound
/// on the calls in flight to each participant, so that thousands of sagas in
/// flight share a few connections instead of opening one each.
#[derive(Debug, Clone)]
pub struct Participants {
    client: reqwest::Client,
    flights: Base,
    cars: Base,
    payments: Base,
    in_flight: [Arc<Semaphore>; 3],
    /// How long a wait for a turn goes before it is logged, as long as one
    /// attempt.
    queue_timeout: Duration,
}

impl Participants {
    /// A client whose every attempt is bounded by `attempt_timeout`.
    pub fn new(
        flights: &str,
        cars: &str,
        payments: &str,
        attempt_timeout: Duration,
        max_in_flight: usize,
    ) -> anyhow::Result<Self> {
        let max_in_flight = max_in_flight.max(1);
        let client = reqwest::Client::builder()
            .timeout(attempt_timeout)
            .connect_timeout(attempt_timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(max_in_flight)
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            flights: Base::parse("FLIGHTS_URL", flights)?,
            cars: Base::parse("CARS_URL", cars)?,
            payments: Base::parse("PAYMENTS_URL", payments)?,
            in_flight: std::array::from_fn(|_| Arc::new(Semaphore::new(max_in_flight))),
            queue_timeout: attempt_timeout,
        })
    }

    fn base(&self, participant: Participant) -> &Base {
        match participant {
            Participant::Flights => &self.flights,
            Participant::Cars => &self.cars,
            Participant::Payments => &self.payments,
        }
    }

    /// Waits for a turn to call `participant`, in line (first come, first
    /// served) with every other saga's call to it. The place in line holds as
    /// long as the returned future does.
    pub fn turn(&self, participant: Participant) -> impl Future<Output = Turn> + Send + 'static {
        let line = Arc::clone(
            &self.in_flight[match participant {
                Participant::Flights => 0,
                Participant::Cars => 1,
                Participant::Payments => 2,
            }],
        );
        async move {
            Turn {
                _permit: line.acquire_owned().await.ok(),
            }
        }
    }

    /// How long a saga waits for a turn before it records that it is still
    /// waiting (which renews its lease): as long as one attempt.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Makes one attempt of `action` for `trip`, in the `turn` it waited for.
    /// The request is built once the turn has come, so that the sagas
    /// waiting for one hold nothing but their place.
    pub async fn call(
        &self,
        action: &Action,
        trip: &Trip,
        outputs: &Outputs,
        turn: Turn,
    ) -> Result<Value, CallFailure> {
        let _turn = turn;
        let body = (action.body)(trip, outputs).map_err(|err| CallFailure {
            transient: false,
            detail: json!({ "error": "cannot build the request", "message": err }),
        })?;
        let url = self
            .base(action.participant)
            .join(&action.path.replace("{trip_id}", &trip.trip_id));
        let key = format!("{}:{}", trip.trip_id, action.step);
        // Boxed: the request's future is large, and only the calls in flight
        // need one.
        let response = Box::pin(
            self.client
                .post(url)
                .header(IDEMPOTENCY_KEY, key)
                .json(&body)
                .send(),
        )
        .await
        .map_err(|err| transport_failure(&err))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| transport_failure(&err))?;
        let answer: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            if answer.is_object() {
                return Ok(answer);
            }
            // A 2xx we cannot read leaves the outcome unknown: ask again.
            return Err(CallFailure {
                transient: true,
                detail: json!({ "status": status.as_u16(), "error": "unreadable answer", "body": answer }),
            });
        }
        Err(CallFailure {
            transient: is_transient(status),
            detail: json!({ "status": status.as_u16(), "body": answer }),
        })
    }
}

/// A participant's base URL, parsed once: a URL parsed for every call (its
/// host included) was 5% of the orchestrator's CPU.
#[derive(Debug, Clone)]
struct Base {
    url: Url,
    /// The base's path without its trailing `/`, to which each call's path
    /// is appended.
    path: String,
}

impl Base {
    /// `url` as the setting `name` gives it.
    fn parse(name: &str, url: &str) -> anyhow::Result<Self> {
        let refuse = |why: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{name}={url:?} is not an http(s) URL ({why}); give one like http://127.0.0.1:8081"
            )
        };
        let url = Url::parse(url).map_err(|err| refuse(&err))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(&format_args!("scheme {}", url.scheme())));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        Ok(Self { url, path })
    }

    /// The URL of `path` (which starts with `/`) under this base.
    fn join(&self, path: &str) -> Url {
        let mut url = self.url.clone();
        url.set_path(&format!("{}{path}", self.path));
        url
    }
}

/// 408, 429 and 5xx may pass; any other 4xx is the participant's final word.
pub fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn transport_failure(err: &reqwest::Error) -> CallFailure {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    CallFailure {
        transient: true,
        detail: json!({ "error": kind, "message": message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_path_goes_under_the_base_path() {
        for (base, url) in [
            (
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8081/reservations/t%201/cancel",
            ),
            (
                "http://127.0.0.1:8081/",
                "http://127.0.0.1:8081/reservations/t%201/cancel",
            ),
            (
                "http://flights:80/api/",
                "http://flights/api/reservations/t%201/cancel",
            ),
        ] {
            let base = Base::parse("FLIGHTS_URL", base).unwrap();
            assert_eq!(base.join("/reservations/t 1/cancel").as_str(), url);
        }
    }

    #[test]
    fn a_base_that_is_no_url_is_refused_with_its_setting_named() {
        let good = "http://127.0.0.1:8081";
        let err = Participants::new(good, "127.0.0.1:8082", good, Duration::from_secs(1), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("CARS_URL=\"127.0.0.1:8082\" is not an http(s) URL"),
            "{err}"
        );
        // A host and port without a scheme parses as a URL of scheme `cars`.
        let err = Participants::new(good, "cars:8082", good, Duration::from_secs(1), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(scheme cars)"), "{err}");
    }

    #[test]
    fn transient_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 404, 409, 415, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
