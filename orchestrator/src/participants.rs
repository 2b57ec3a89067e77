//! The HTTP client for the participants: renders each call from the saga
//! definition, sends it with its idempotency key, and sorts the answer into
//! success, transient failure (retry) or business failure (final).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::wire::IDEMPOTENCY_KEY;
use reqwest::Url;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::definition::Action;
use crate::definition::template::Scope;
use crate::retry::{RetryBudget, RetryConfig};

/// Why a call did not succeed, with what to record in `saga_log`.
#[derive(Debug, Clone)]
pub struct CallFailure {
    /// Retrying may help: a timeout, a connection error, 408, 429 or 5xx
    /// (or, for a step that lists its business failures, any status not
    /// listed).
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

/// One participant: where it is, its line of calls, and its retry budget.
#[derive(Debug)]
struct Participant {
    base: Base,
    key: Option<common::auth::Key>,
    in_flight: Arc<Semaphore>,
    budget: RetryBudget,
}

/// The participants' base URLs by name, one shared, pooled HTTP client, and
/// a bound on the calls in flight to each participant, so that thousands of
/// sagas in flight share a few connections instead of opening one each.
#[derive(Debug, Clone)]
pub struct Participants {
    client: reqwest::Client,
    by_name: Arc<HashMap<String, Participant>>,
    /// How long a wait for a turn goes before it is logged, as long as one
    /// attempt.
    queue_timeout: Duration,
    /// The longest answer read (`PARTICIPANT_MAX_ANSWER_BYTES`).
    max_answer_bytes: usize,
}

/// A participant's base URL as configured: the setting that gave it (named
/// in errors) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub setting: String,
    pub url: String,
    /// The key its calls are signed with (`PARTICIPANT_<NAME>_KEY`), if
    /// it checks them.
    pub key: Option<common::auth::Key>,
}

impl Participants {
    /// A client whose every attempt is bounded by `ATTEMPT_TIMEOUT_MS` (a
    /// step may set its own), for the participants in `urls` (by name), each
    /// with a retry budget as `retry` sets it. An https URL's certificate
    /// is checked against the system's roots and `roots`.
    pub fn new(
        urls: &BTreeMap<String, BaseUrl>,
        retry: &RetryConfig,
        max_in_flight: usize,
        max_answer_bytes: usize,
        roots: Vec<reqwest::Certificate>,
    ) -> anyhow::Result<Self> {
        let attempt_timeout = retry.attempt_timeout();
        let max_in_flight = max_in_flight.max(1);
        let client = reqwest::Client::builder()
            .timeout(attempt_timeout)
            .connect_timeout(attempt_timeout.min(Duration::from_secs(2)))
            // Shorter than the participants' header read timeout (30 s by
            // default), which also closes idle connections: the pool drops
            // one first, instead of racing the participant's close.
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(max_in_flight)
            .tcp_nodelay(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(roots)
            .build()?;
        let mut by_name = HashMap::new();
        for (name, base) in urls {
            by_name.insert(
                name.clone(),
                Participant {
                    base: Base::parse(&base.setting, &base.url)?,
                    key: base.key.clone(),
                    in_flight: Arc::new(Semaphore::new(max_in_flight)),
                    budget: RetryBudget::new(retry),
                },
            );
        }
        Ok(Self {
            client,
            by_name: Arc::new(by_name),
            queue_timeout: attempt_timeout,
            max_answer_bytes,
        })
    }

    /// The names of the participants with a base URL.
    pub fn names(&self) -> BTreeSet<String> {
        self.by_name.keys().cloned().collect()
    }

    /// `participant`'s base URL, as calls to it start.
    pub fn base_url(&self, participant: &str) -> Option<String> {
        let base = &self.by_name.get(participant)?.base;
        Some(base.join("").as_str().trim_end_matches('/').to_owned())
    }

    /// Waits for a turn to call `participant`, in line (first come, first
    /// served) with every other saga's call to it. The place in line holds as
    /// long as the returned future does. A participant with no URL (a
    /// definition is refused before that can happen) takes no turn.
    pub fn turn(&self, participant: &str) -> impl Future<Output = Turn> + Send + 'static {
        let line = self
            .by_name
            .get(participant)
            .map(|p| Arc::clone(&p.in_flight));
        async move {
            let permit = match line {
                Some(line) => line.acquire_owned().await.ok(),
                None => None,
            };
            Turn { _permit: permit }
        }
    }

    /// Counts a first attempt to `participant` towards its retry budget.
    pub fn first_attempt(&self, participant: &str) {
        if let Some(p) = self.by_name.get(participant) {
            p.budget.first_attempt();
        }
    }

    /// Waits until `participant`'s retry budget pays for one retry.
    pub async fn retry_budget(&self, participant: &str) {
        if let Some(p) = self.by_name.get(participant) {
            p.budget.retry().await;
        }
    }

    /// How long a saga waits for a turn before it records that it is still
    /// waiting (which renews its lease): as long as one attempt.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Makes one attempt of `action` for the saga `scope` describes, in the
    /// `turn` it waited for. The request is built once the turn has come, so
    /// that the sagas waiting for one hold nothing but their place. A
    /// template that cannot be rendered (a field an answer lacks) fails the
    /// call for good, without sending it.
    pub async fn call(
        &self,
        action: &Action,
        scope: &Scope<'_>,
        turn: Turn,
    ) -> Result<Value, CallFailure> {
        let _turn = turn;
        let rendered = action.render(scope).map_err(|err| CallFailure {
            transient: false,
            detail: json!({ "error": "template", "message": err.to_string() }),
        })?;
        let Some(participant) = self.by_name.get(&*action.participant) else {
            return Err(CallFailure {
                transient: true,
                detail: json!({
                    "error": "no participant URL",
                    "message": format!("set {}", crate::definition::validate::url_setting(&action.participant)),
                }),
            });
        };
        let url = participant.base.join(&rendered.path);
        let key = format!("{}:{}", scope.saga_id, action.step);
        // What the participant's check reads: the path with its query.
        let signed = participant.key.as_ref().map(|k| {
            (
                k,
                url[url::Position::BeforePath..url::Position::AfterQuery].to_owned(),
            )
        });
        let mut request = self
            .client
            .request(action.method.clone(), url)
            .header(IDEMPOTENCY_KEY, key);
        if common::telemetry::enabled() {
            let mut headers = reqwest::header::HeaderMap::new();
            common::telemetry::inject(&mut headers);
            request = request.headers(headers);
        }
        if let Some(timeout) = action.timeout {
            request = request.timeout(timeout);
        }
        let body = match &rendered.body {
            Some(body) => serde_json::to_vec(body).map_err(|err| CallFailure {
                transient: false,
                detail: json!({ "error": "template", "message": err.to_string() }),
            })?,
            None => Vec::new(),
        };
        if let Some((key, path)) = signed {
            let now = chrono::Utc::now().timestamp();
            for (name, value) in key.sign(&action.method, &path, now, &body) {
                request = request.header(name, value);
            }
        }
        if rendered.body.is_some() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        // Boxed: the request's future is large, and only the calls in flight
        // need one.
        let response = Box::pin(request.send())
            .await
            .map_err(|err| transport_failure(&err))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(redirect_refused(&action.participant, &response));
        }
        let bytes = read_answer(response, self.max_answer_bytes).await?;
        let (answer, nul_at) = stored_form(&bytes);
        let failed = |error: &str, message: String| CallFailure {
            // A 2xx we cannot use leaves the outcome unknown: ask again (a
            // participant's replay of a bad answer fails each attempt, and
            // the step fails when its attempts run out).
            transient: true,
            detail: json!({ "status": status.as_u16(), "error": error, "message": message, "body": answer }),
        };
        if status.is_success() {
            if let Some(path) = nul_at {
                let at = if path.is_empty() {
                    String::new()
                } else {
                    format!(" at {path}")
                };
                return Err(failed(
                    "unstorable answer",
                    format!(
                        "the answer holds the character U+0000 (NUL){at}, which PostgreSQL cannot store; it is recorded escaped"
                    ),
                ));
            }
            if !answer.is_object() {
                return Err(failed(
                    "unreadable answer",
                    "a 2xx answer must be a JSON object".to_owned(),
                ));
            }
            if let Some(missing) = action.needs.iter().find(|path| !holds(&answer, path)) {
                return Err(failed(
                    "incomplete answer",
                    format!(
                        "the answer has no {}, which a later step reads (steps.{}.{})",
                        missing.join("."),
                        action.step,
                        missing.join(".")
                    ),
                ));
            }
            return Ok(answer);
        }
        Err(CallFailure {
            transient: !action.is_business_failure(status.as_u16()),
            detail: json!({ "status": status.as_u16(), "body": answer }),
        })
    }
}

/// Whether `answer` has a value (`null` included) at `path`.
fn holds(answer: &Value, path: &[String]) -> bool {
    path.iter()
        .try_fold(answer, |at, field| at.get(field))
        .is_some()
}

/// How much of an answer that is not JSON is recorded.
const RECORDED_TEXT_CHARS: usize = 2048;

/// An answer as `saga_log` records it: the JSON it holds, or its text (its
/// first [`RECORDED_TEXT_CHARS`] characters); with every NUL escaped, and
/// where the first one was.
fn stored_form(bytes: &[u8]) -> (Value, Option<String>) {
    let mut answer = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let mut kept: String = text.chars().take(RECORDED_TEXT_CHARS).collect();
            if kept.len() < text.len() {
                kept.push_str(&format!(" … ({} bytes in all)", bytes.len()));
            }
            Value::String(kept)
        }
    };
    // JSON carries a NUL only escaped; raw text may hold one anywhere.
    let nul_at = (bytes.contains(&0) || common::text::may_hold_refused(bytes))
        .then(|| common::text::escape_nul(&mut answer))
        .flatten();
    (answer, nul_at)
}

/// The body of `response`, or a failed attempt if it is longer than
/// `limit` bytes (its start recorded) or cannot be read.
async fn read_answer(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<axum::body::Bytes, CallFailure> {
    let status = response.status().as_u16();
    let too_large = |start: &[u8]| {
        let (mut start, _) = stored_form(&start[..start.len().min(256)]);
        if !start.is_string() {
            start = Value::String(start.to_string());
        }
        CallFailure {
            transient: true,
            detail: json!({
                "status": status,
                "error": "answer too large",
                "message": format!("the answer is longer than PARTICIPANT_MAX_ANSWER_BYTES ({limit} bytes); it was not read further"),
                "body": start,
            }),
        }
    };
    // The usual answer says its length: read it at once.
    if let Some(length) = response.content_length() {
        if usize::try_from(length).is_ok_and(|n| n <= limit) {
            return response
                .bytes()
                .await
                .map_err(|err| transport_failure(&err));
        }
        return Err(too_large(&[]));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| transport_failure(&err))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(too_large(&body));
        }
    }
    Ok(body.into())
}

/// A 3xx: the orchestrator follows no redirect (a participant's URL is
/// configured, and a redirect could send a call, its key and its body
/// elsewhere).
fn redirect_refused(participant: &str, response: &reqwest::Response) -> CallFailure {
    let to = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nowhere said");
    CallFailure {
        transient: true,
        detail: json!({
            "status": response.status().as_u16(),
            "error": "redirect refused",
            "message": format!(
                "the participant answered a redirect (to {}); the orchestrator follows none: set {} to the participant's own address",
                to.escape_debug(),
                crate::definition::validate::url_setting(participant)
            ),
        }),
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
        let urls = |cars: &str| {
            BTreeMap::from([(
                "cars".to_owned(),
                BaseUrl {
                    setting: "CARS_URL".into(),
                    url: cars.into(),
                    key: None,
                },
            )])
        };
        let err = Participants::new(
            &urls("127.0.0.1:8082"),
            &RetryConfig::default(),
            1,
            1024,
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("CARS_URL=\"127.0.0.1:8082\" is not an http(s) URL"),
            "{err}"
        );
        // A host and port without a scheme parses as a URL of scheme `cars`.
        let err = Participants::new(
            &urls("cars:8082"),
            &RetryConfig::default(),
            1,
            1024,
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("(scheme cars)"), "{err}");
    }
}
