//! The participants take calls from the orchestrator only: each call is
//! signed with the participant's own key (`common::auth`). Unsigned,
//! wrongly signed, expired, replayed or another participant's calls get a
//! 401 and change nothing; the refusals are counted; the probes and
//! `/metrics` stay open; two keys are accepted during a rotation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Env, scrape, signed};
use cluster::Participant;

fn reservation(trip_id: &str) -> String {
    json!({
        "trip_id": trip_id, "run_type": "success",
        "depart_city": "Detroit", "depart_time": "2021-07-07T06:00:00Z",
        "arrive_city": "Frankfurt", "arrive_time": "2021-07-09T08:00:00Z",
    })
    .to_string()
}

/// POSTs `body` to `url` with `headers`: the status and the error code.
async fn post(url: &str, headers: reqwest::header::HeaderMap, body: &str) -> (StatusCode, String) {
    let answer = reqwest::Client::new()
        .post(url)
        .headers(headers)
        .header("content-type", "application/json")
        .header(
            common::wire::IDEMPOTENCY_KEY,
            uuid::Uuid::new_v4().to_string(),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The headers of `key` signing `body` to `url` at `timestamp`.
fn signed_at(
    key: &common::auth::Key,
    url: &str,
    timestamp: i64,
    body: &str,
) -> reqwest::header::HeaderMap {
    let path = reqwest::Url::parse(url).unwrap().path().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in key.sign(&Method::POST, &path, timestamp, body.as_bytes()) {
        headers.insert(name, value);
    }
    headers
}

#[tokio::test]
async fn only_the_orchestrators_signed_calls_reach_a_participant() {
    let env = Env::start().await;
    // The orchestrator's own calls pass.
    let trip = env.get("/trip?tripID=auth-0&runType=failPayment").await;
    assert_eq!(trip.body["status"], "failed", "{}", trip.body);

    let url = format!("{}/reservations", env.cluster.flights_url);
    let flights = env.cluster.key(Participant::Flights);
    let cars = env.cluster.key(Participant::Cars);
    let body = reservation("auth-1");
    let now = chrono::Utc::now().timestamp();
    let stranger = common::auth::Key::parse("flights-1:not-the-secret-at-all").unwrap();
    let cases = [
        ("missing", reqwest::header::HeaderMap::new()),
        (
            "another participant's key",
            signed(&cars, &Method::POST, &url, body.as_bytes()),
        ),
        (
            "a wrong secret",
            signed(&stranger, &Method::POST, &url, body.as_bytes()),
        ),
        ("expired", signed_at(&flights, &url, now - 120, &body)),
        (
            "from the future",
            signed_at(&flights, &url, now + 120, &body),
        ),
        (
            "another body",
            signed(
                &flights,
                &Method::POST,
                &url,
                reservation("auth-2").as_bytes(),
            ),
        ),
        (
            "another path",
            signed(
                &flights,
                &Method::POST,
                &format!("{url}/auth-1/cancel"),
                body.as_bytes(),
            ),
        ),
    ];
    for (what, headers) in cases {
        assert_eq!(
            post(&url, headers, &body).await,
            (StatusCode::UNAUTHORIZED, "unauthenticated".to_owned()),
            "{what}"
        );
    }
    let rows = || env.count("SELECT count(*) FROM flights.reservations WHERE trip_id <> 'auth-0'");
    assert_eq!(rows().await, 0, "nothing changed");

    // Signed: it passes once; the same call again is a replay.
    let headers = signed(&flights, &Method::POST, &url, body.as_bytes());
    assert_eq!(post(&url, headers.clone(), &body).await.0, StatusCode::OK);
    assert_eq!(
        post(&url, headers, &body).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".to_owned())
    );
    assert_eq!(rows().await, 1);

    // Each refusal counted by its reason; the probes and metrics open.
    let metrics = scrape(&env.cluster.flights_url).await;
    for (reason, n) in [
        ("missing", 1),
        ("unknown_key", 1),
        ("bad_signature", 3),
        ("expired", 2),
        ("replayed", 1),
    ] {
        let series = format!("auth_refusals_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&series), "{series}:\n{metrics}");
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let answer = reqwest::get(format!("{}{path}", env.cluster.flights_url))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
    }
    env.finish().await;
}

#[tokio::test]
async fn during_a_rotation_both_keys_are_taken() {
    let db = testkit::TestDb::new().await;
    let mut registry = Default::default();
    let keys =
        common::auth::parse_keys("old:0123456789abcdef0123,new:fedcba9876543210fedc").unwrap();
    let verifier = common::auth::Verifier::new(keys, &mut registry);
    let app = flights_svc::app(flights_svc::AppState {
        db: common::db::Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    });
    let server = testkit::TestServer::start(verifier.layer(app)).await;
    let url = format!("{}/reservations", server.url);
    for (key, trip, status) in [
        ("old:0123456789abcdef0123", "rot-1", StatusCode::OK),
        ("new:fedcba9876543210fedc", "rot-2", StatusCode::OK),
        (
            "next:00000000000000000000",
            "rot-3",
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let key = common::auth::Key::parse(key).unwrap();
        let body = reservation(trip);
        let headers = signed(&key, &Method::POST, &url, body.as_bytes());
        assert_eq!(post(&url, headers, &body).await.0, status, "{trip}");
    }
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM flights.reservations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(booked, 2);
}
