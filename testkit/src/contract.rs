//! The contract every booking participant keeps (flights-svc, cars-svc),
//! written once and run against each: idempotent reserve, confirm and
//! cancel; the only illegal transitions are 409s; tombstones; injected
//! failures write nothing; bad input is a 4xx JSON error.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};

/// A booking participant under test.
#[derive(Debug, Clone, Copy)]
pub struct Booking<'a> {
    /// The service's base URL.
    pub url: &'a str,
    /// The collection path, e.g. `/reservations`.
    pub collection: &'static str,
    /// The participant's table, e.g. `flights.reservations`.
    pub table: &'static str,
    /// A valid reserve body for a trip and run type.
    pub reserve_body: fn(&str, &str) -> Value,
    /// The run types that fail reserve and confirm here.
    pub fail_reserve: &'static str,
    pub fail_confirm: &'static str,
}

/// POSTs `body` as JSON: the answer's status and JSON body.
pub async fn post(url: &str, body: &Value) -> (StatusCode, Value) {
    post_keyed(url, None, body).await
}

/// POSTs `body` as JSON with an `Idempotency-Key`, if given.
pub async fn post_keyed(url: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(key) = key {
        request = request.header(common::wire::IDEMPOTENCY_KEY, key);
    }
    let response = request.send().await.expect("request failed");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates a trip at `collection_url` with a key: the first answer, after
/// checking that a participant's answer, which its SQL builds, reads as the
/// wire type `T` writes it, and that a replay, an unkeyed call and a read
/// of `{collection_url}/{trip_id}` all answer the same.
pub async fn answers_alike<T>(collection_url: &str, body: &Value) -> Value
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let key = format!("{}:first", body["trip_id"].as_str().unwrap_or_default());
    let (status, first) = post_keyed(collection_url, Some(&key), body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let typed: T = serde_json::from_value(first.clone()).expect("the wire type reads it");
    assert_eq!(
        serde_json::to_value(typed).unwrap(),
        first,
        "as the wire type writes it"
    );
    let (_, replay) = post_keyed(collection_url, Some(&key), body).await;
    assert_eq!(replay, first, "a replay");
    let (_, unkeyed) = post(collection_url, body).await;
    assert_eq!(unkeyed, first, "an unkeyed call");
    let read: Value = reqwest::get(format!(
        "{collection_url}/{}",
        body["trip_id"].as_str().unwrap_or_default()
    ))
    .await
    .expect("request failed")
    .json()
    .await
    .unwrap_or(Value::Null);
    assert_eq!(read, first, "a read");
    first
}

impl Booking<'_> {
    fn at(&self, path: &str) -> String {
        format!("{}{}{path}", self.url, self.collection)
    }

    async fn reserve(&self, trip: &str, run_type: &str) -> (StatusCode, Value) {
        post(&self.at(""), &(self.reserve_body)(trip, run_type)).await
    }

    async fn act(&self, trip: &str, action: &str, body: Value) -> (StatusCode, Value) {
        post(&self.at(&format!("/{trip}/{action}")), &body).await
    }

    async fn rows(&self, pool: &PgPool, trip: &str) -> Vec<String> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT status::text AS status FROM {} WHERE trip_id = $1",
            self.table
        )))
        .bind(trip)
        .fetch_all(pool)
        .await
        .expect("query participant table")
        .iter()
        .map(|row| row.get("status"))
        .collect()
    }

    /// Runs the whole contract; panics on the first breach.
    pub async fn check(&self, pool: &PgPool) {
        self.reserve_confirm_cancel(pool).await;
        self.idempotency_keys(pool).await;
        self.tombstones(pool).await;
        self.injected_failures(pool).await;
        self.bad_input().await;
    }

    async fn reserve_confirm_cancel(&self, pool: &PgPool) {
        let (status, first) = self.reserve("t1", "success").await;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!(first["status"], "pending");
        let (status, again) = self.reserve("t1", "success").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again, first, "a replayed reserve answers the first booking");
        assert_eq!(self.rows(pool, "t1").await, ["pending"]);

        let booking = first["booking_id"].clone();
        let (status, confirmed) = self
            .act("t1", "confirm", json!({ "booking_id": booking }))
            .await;
        assert_eq!(status, StatusCode::OK, "{confirmed}");
        assert_eq!(confirmed["status"], "confirmed");
        let (status, again) = self.act("t1", "confirm", json!({})).await;
        assert_eq!(
            (status, &again["status"]),
            (StatusCode::OK, &json!("confirmed"))
        );
        let (status, again) = self.reserve("t1", "success").await;
        assert_eq!(
            (status, &again["status"]),
            (StatusCode::OK, &json!("confirmed"))
        );

        let (status, body) = self
            .act(
                "t1",
                "confirm",
                json!({ "booking_id": uuid::Uuid::new_v4() }),
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::CONFLICT, &json!("booking_mismatch"))
        );

        let (status, cancelled) = self.act("t1", "cancel", json!({})).await;
        assert_eq!(
            (status, &cancelled["status"]),
            (StatusCode::OK, &json!("cancelled"))
        );
        let (status, again) = self.act("t1", "cancel", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again, cancelled, "a replayed cancel answers the same");

        let (status, body) = self.act("t1", "confirm", json!({})).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "confirm of a cancelled booking: {body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        let (status, _) = self.reserve("t1", "success").await;
        assert_eq!(status, StatusCode::CONFLICT, "reserve of a cancelled trip");
        assert_eq!(self.rows(pool, "t1").await, ["cancelled"]);

        let shown = reqwest::get(self.at("/t1")).await.expect("GET the booking");
        assert_eq!(shown.status(), StatusCode::OK);
        let shown: Value = shown.json().await.expect("JSON booking");
        assert_eq!(shown, again);
    }

    /// A resent call with the same key gets the first answer back and has no
    /// second effect, even after the state moved on; duplicates sent at once
    /// make one effect.
    async fn idempotency_keys(&self, pool: &PgPool) {
        let body = (self.reserve_body)("k1", "success");
        let (status, first) = post_keyed(&self.at(""), Some("k1:Reserve"), &body).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = post_keyed(&self.at("/k1/cancel"), Some("k1:Cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let (status, replay) = post_keyed(&self.at(""), Some("k1:Reserve"), &body).await;
        assert_eq!(
            (status, &replay),
            (StatusCode::OK, &first),
            "the stored first answer"
        );
        let (status, _) = post_keyed(&self.at(""), None, &body).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "without the key, the state decides"
        );
        assert_eq!(self.rows(pool, "k1").await, ["cancelled"]);

        // Keys taken by k1's calls, sent for a trip never seen: each first
        // answer comes back, and what the new call did is undone.
        let other = (self.reserve_body)("k3", "success");
        let (status, replay) = post_keyed(&self.at(""), Some("k1:Reserve"), &other).await;
        assert_eq!((status, &replay), (StatusCode::OK, &first));
        let (status, replay) =
            post_keyed(&self.at("/k3/cancel"), Some("k1:Cancel"), &json!({})).await;
        assert_eq!((status, &replay["trip_id"]), (StatusCode::OK, &json!("k1")));
        assert!(self.rows(pool, "k3").await.is_empty(), "no row for k3");

        let (status, refused) = post_keyed(&self.at(""), Some("k1:Late"), &body).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, again) = post_keyed(&self.at(""), Some("k1:Late"), &body).await;
        assert_eq!(
            (status, &again),
            (StatusCode::CONFLICT, &refused),
            "a refusal is replayed too"
        );

        let body = (self.reserve_body)("k2", "success");
        let url = self.at("");
        let answers =
            futures::future::join_all((0..8).map(|_| post_keyed(&url, Some("k2:Reserve"), &body)))
                .await;
        assert!(
            answers
                .iter()
                .all(|a| a == &answers[0] && a.0 == StatusCode::OK),
            "{answers:?}"
        );
        let keys: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.idempotency_keys WHERE key = 'k2:Reserve'",
            self.table.split('.').next().unwrap_or_default()
        )))
        .fetch_one(pool)
        .await
        .expect("count keys");
        assert_eq!(keys, 1);

        let long = "k".repeat(201);
        let (status, body) = post_keyed(&self.at("/k2/cancel"), Some(&long), &json!({})).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_idempotency_key"))
        );
    }

    async fn tombstones(&self, pool: &PgPool) {
        let (status, body) = self.act("never-seen", "cancel", json!({})).await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("cancelled"))
        );
        assert_eq!(self.rows(pool, "never-seen").await, ["cancelled"]);
        let (status, _) = self.reserve("never-seen", "success").await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "a late reserve after a cancel is refused"
        );
        let (status, _) = self.act("unknown", "confirm", json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(self.rows(pool, "unknown").await.is_empty());
    }

    async fn injected_failures(&self, pool: &PgPool) {
        let (status, body) = self.reserve("t2", self.fail_reserve).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("injected_failure"))
        );
        assert!(
            self.rows(pool, "t2").await.is_empty(),
            "an injected failure writes nothing"
        );

        let (status, _) = self.reserve("t3", self.fail_confirm).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "only confirm fails for {}",
            self.fail_confirm
        );
        let (status, body) = self
            .act("t3", "confirm", json!({ "run_type": self.fail_confirm }))
            .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("injected_failure"))
        );
        assert_eq!(self.rows(pool, "t3").await, ["pending"]);
        let (status, _) = self
            .act("t3", "cancel", json!({ "run_type": self.fail_confirm }))
            .await;
        assert_eq!(status, StatusCode::OK, "cancel never fails");
    }

    async fn bad_input(&self) {
        let (status, body) = self.reserve("bad/id", "success").await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_trip_id"))
        );
        let (status, body) = self.reserve(&"x".repeat(65), "success").await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_trip_id"))
        );
        let (status, body) = self.reserve("t4", "failEverything").await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_body"))
        );
        let (status, body) = post(&self.at(""), &json!({ "trip_id": "t5" })).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_body"))
        );
        let response = reqwest::Client::new()
            .post(self.at(""))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "malformed_json");
        let response = reqwest::Client::new()
            .post(self.at(""))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let response = reqwest::get(format!("{}/nowhere", self.url)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
}
