//! A cluster on a fresh database, and ways to look at it.

use std::time::Duration;

use cluster::{Cluster, Listeners, Participant};
use faultproxy::{FaultProxy, Faults};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use testkit::TestDb;

pub struct Env {
    pub db: TestDb,
    pub cluster: Cluster,
    http: reqwest::Client,
    /// The participant URLs the orchestrators call, when proxied.
    proxied: Option<[String; 3]>,
}

/// A fault proxy in front of each participant.
pub struct Proxies {
    pub flights: FaultProxy,
    pub cars: FaultProxy,
    pub payments: FaultProxy,
}

/// Quick retries, so that tests of failures take milliseconds.
fn quick(config: &mut orchestrator::Config) {
    config.retry.step_max_attempts = 3;
    config.retry.retry_initial_delay_ms = 10;
    config.retry.retry_max_delay_ms = 50;
    config.retry.compensation_max_delay_ms = 100;
    config.retry.retry_jitter = false;
    config.retry.attempt_timeout_ms = 300;
    config.recovery_interval_ms = 100;
}

/// An HTTP answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(&[], |_| {}).await
    }

    /// A cluster with quick retries, `hold` participants not served yet, and
    /// `configure` applied to the orchestrator's settings.
    pub async fn start_with(
        hold: &[Participant],
        configure: impl FnOnce(&mut orchestrator::Config),
    ) -> Self {
        let db = TestDb::new().await;
        let listeners = Listeners::bind("127.0.0.1", 0).await.expect("bind port 0");
        let cluster = Cluster::start(db.url(), listeners, hold, |config| {
            quick(config);
            configure(config);
        })
        .await
        .expect("start the cluster");
        Self {
            db,
            cluster,
            http: reqwest::Client::new(),
            proxied: None,
        }
    }

    /// A cluster whose orchestrator calls each participant through a fault
    /// proxy (no faults until a test asks for them).
    pub async fn start_proxied(
        configure: impl FnOnce(&mut orchestrator::Config),
    ) -> (Self, Proxies) {
        let db = TestDb::new().await;
        let listeners = Listeners::bind("127.0.0.1", 0).await.expect("bind port 0");
        let proxy = |listener: &tokio::net::TcpListener| {
            let upstream = format!("http://{}", listener.local_addr().expect("bound"));
            async move {
                let at = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind port 0");
                FaultProxy::start(at, &upstream, Faults::default()).expect("start proxy")
            }
        };
        let proxies = Proxies {
            flights: proxy(&listeners.flights).await,
            cars: proxy(&listeners.cars).await,
            payments: proxy(&listeners.payments).await,
        };
        let urls = [
            proxies.flights.url.clone(),
            proxies.cars.url.clone(),
            proxies.payments.url.clone(),
        ];
        let proxied = urls.clone();
        let cluster = Cluster::start(db.url(), listeners, &[], move |config| {
            quick(config);
            [config.flights_url, config.cars_url, config.payments_url] = proxied;
            configure(config);
        })
        .await
        .expect("start the cluster");
        let env = Self {
            db,
            cluster,
            http: reqwest::Client::new(),
            proxied: Some(urls),
        };
        (env, proxies)
    }

    /// Starts another orchestrator on the same database and participants
    /// (through the proxies, if any); returns its URL.
    pub async fn spawn_orchestrator(
        &mut self,
        configure: impl FnOnce(&mut orchestrator::Config),
    ) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let proxied = self.proxied.clone();
        self.cluster
            .spawn_orchestrator(listener, move |config| {
                quick(config);
                if let Some(urls) = proxied {
                    [config.flights_url, config.cars_url, config.payments_url] = urls;
                }
                configure(config);
            })
            .await
            .expect("start another orchestrator")
    }

    /// GETs `path` from the orchestrator at `base`.
    pub async fn get_at(&self, base: &str, path: &str) -> Answer {
        Self::answer(
            self.http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    /// Checks the consistency invariant over every saga, then stops the
    /// services.
    pub async fn finish_clean(self) {
        testkit::invariant::check(self.db.pool())
            .await
            .unwrap()
            .assert_clean();
        self.finish().await;
    }

    /// Stops the services before the database goes.
    pub async fn finish(self) {
        self.cluster
            .stop()
            .await
            .expect("the services stop cleanly");
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        let url = format!("{}{path}", self.cluster.orchestrator_url);
        Self::answer(self.http.get(url).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_at(&self.cluster.orchestrator_url, path, body)
            .await
    }

    /// POSTs `body` to `path` at the orchestrator at `base`.
    pub async fn post_at(&self, base: &str, path: &str, body: &Value) -> Answer {
        let url = format!("{base}{path}");
        Self::answer(self.http.post(url).json(body).send().await.expect("POST")).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: &'static str,
    ) -> Answer {
        let url = format!("{}{path}", self.cluster.orchestrator_url);
        let mut request = self.http.post(url).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        Self::answer(request.send().await.expect("POST")).await
    }

    /// Sends `body` to `path` with `method` and `Content-Type: content_type`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Answer {
        let url = format!("{}{path}", self.cluster.orchestrator_url);
        let request = self
            .http
            .request(method, url)
            .header("content-type", content_type)
            .body(body);
        Self::answer(request.send().await.expect("send")).await
    }

    /// The saga's log as `(step, status)` pairs, in order.
    pub async fn log(&self, trip_id: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT step, status::text FROM orchestrator.saga_log WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(trip_id)
        .fetch_all(self.db.pool())
        .await
        .expect("read saga_log")
    }

    /// The trip's participant rows: flight, car and payment status.
    pub async fn rows(&self, trip_id: &str) -> [Option<String>; 3] {
        let mut found = [None, None, None];
        for (slot, table) in
            found
                .iter_mut()
                .zip(["flights.reservations", "cars.rentals", "payments.payments"])
        {
            *slot = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT status::text FROM {table} WHERE trip_id = $1"
            )))
            .bind(trip_id)
            .fetch_optional(self.db.pool())
            .await
            .expect("read participant row");
        }
        found
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.db.pool())
            .await
            .expect("count")
    }

    /// Awaits the saga of `trip_id` satisfying `done`.
    pub async fn saga_when(
        &self,
        trip_id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        testkit::eventually(what, Duration::from_secs(30), || async {
            let answer = self.get(&format!("/trips/{trip_id}")).await;
            (answer.status == StatusCode::OK && done(&answer.body)).then_some(answer.body)
        })
        .await
    }
}

/// The `(step, status)` pairs of a saga's `steps`.
pub fn steps(saga: &Value) -> Vec<(String, String)> {
    saga["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// One step of a saga by name.
pub fn step<'a>(saga: &'a Value, name: &str) -> Option<&'a Value> {
    saga["steps"].as_array()?.iter().find(|s| s["step"] == name)
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Awaits the proxy holding `n` requests.
/// A proxied cluster whose held calls are not timed out and retried, and
/// the trip `query` (`tripID=..&runType=..`) started and held on its first
/// call to `path` through the proxy `held` picks.
pub async fn held_trip(
    query: &str,
    held: impl Fn(&Proxies) -> &FaultProxy,
    path: &str,
) -> (Env, Proxies) {
    let (env, proxies) = Env::start_proxied(|c| c.retry.attempt_timeout_ms = 10_000).await;
    held(&proxies).hold(faultproxy::Hold {
        path: path.into(),
        at: faultproxy::HoldAt::Request,
        count: 1,
    });
    let started = env.get(&format!("/trip?{query}&wait=0")).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    holding(held(&proxies), 1).await;
    (env, proxies)
}

pub async fn holding(proxy: &FaultProxy, n: usize) {
    testkit::eventually(
        "the proxy to hold the call",
        Duration::from_secs(10),
        || async { (proxy.holding() == n).then_some(()) },
    )
    .await;
}

/// The text `GET /metrics` answers at `base`, once its content type is
/// checked.
pub async fn scrape(base: &str) -> String {
    let answer = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    answer.text().await.expect("metrics text")
}

/// The value of the series `series` (name and labels, as written), or 0
/// when it is absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// The headers that sign a call of `method` to `url` carrying `body` with
/// `key`, as the orchestrator signs its calls to a participant.
pub fn signed(
    key: &common::auth::Key,
    method: &reqwest::Method,
    url: &str,
    body: &[u8],
) -> reqwest::header::HeaderMap {
    let url = reqwest::Url::parse(url).expect("a URL");
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in key.sign(method, &path, chrono::Utc::now().timestamp(), body) {
        headers.insert(name, value);
    }
    headers
}
