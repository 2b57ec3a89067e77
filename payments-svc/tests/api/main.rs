//! payments-svc over real HTTP on a fresh database.

use common::db::Db;
use payments_svc::{AppState, app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::contract::{post, post_keyed};
use testkit::{TestDb, TestServer};

fn charge_body(trip_id: &str, run_type: &str) -> Value {
    json!({
        "trip_id": trip_id,
        "amount": "750.00",
        "currency": "USD",
        "flight_booking_id": "5f0c4bfb-8f27-4c5e-9d58-0d7a4a7e2f11",
        "car_booking_id": "8d1e0c6a-2b7e-4a55-8f7a-3e3b5b1c9d22",
        "run_type": run_type,
    })
}

async fn rows(pool: &PgPool, trip_id: &str) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT status::text, amount::text FROM payments.payments WHERE trip_id = $1")
        .bind(trip_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn server(db: &TestDb) -> TestServer {
    TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await
}

#[tokio::test]
async fn charge_and_refund_are_idempotent() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let charge = format!("{}/payments", s.url);
    let refund = format!("{}/payments/t1/refund", s.url);

    let (status, first) = post(&charge, &charge_body("t1", "success")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (&first["status"], &first["amount"]),
        (&json!("charged"), &json!("750.00"))
    );
    let (status, again) = post(&charge, &charge_body("t1", "success")).await;
    assert_eq!(
        (status, &again),
        (StatusCode::OK, &first),
        "a replayed charge answers the first payment"
    );
    assert_eq!(
        rows(db.pool(), "t1").await,
        [("charged".into(), Some("750.00".into()))]
    );

    let (status, refunded) = post(&refund, &json!({})).await;
    assert_eq!(
        (status, &refunded["status"]),
        (StatusCode::OK, &json!("refunded"))
    );
    assert_eq!(refunded["payment_id"], first["payment_id"]);
    let (status, again) = post(&refund, &json!({})).await;
    assert_eq!((status, &again), (StatusCode::OK, &refunded));

    let (status, body) = post(&charge, &charge_body("t1", "success")).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("payment_refunded"))
    );
    assert_eq!(
        rows(db.pool(), "t1").await,
        [("refunded".into(), Some("750.00".into()))]
    );
}

#[tokio::test]
async fn a_refund_before_the_charge_leaves_a_tombstone() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let (status, body) = post(&format!("{}/payments/early/refund", s.url), &json!({})).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("refunded"))
    );
    let (status, _) = post(
        &format!("{}/payments", s.url),
        &charge_body("early", "success"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a late charge is refused");
    assert_eq!(rows(db.pool(), "early").await, [("refunded".into(), None)]);
}

#[tokio::test]
async fn injected_failure_and_bad_input_write_nothing() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let charge = format!("{}/payments", s.url);
    let (status, body) = post(&charge, &charge_body("t2", "failPayment")).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("injected_failure"))
    );

    let mut bad = charge_body("t2", "success");
    bad["currency"] = json!("dollars");
    let (status, body) = post(&charge, &bad).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_payment"))
    );
    let mut bad = charge_body("t2", "success");
    bad["amount"] = json!("-5");
    let (status, body) = post(&charge, &bad).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_payment"))
    );
    let (status, body) = post(&charge, &json!({ "trip_id": "t2" })).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_body"))
    );
    let (status, body) = post(&charge, &charge_body("no spaces", "success")).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_trip_id"))
    );
    assert!(rows(db.pool(), "t2").await.is_empty());

    let response = reqwest::get(format!("{}/payments/t2", s.url))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_resent_charge_gets_its_first_answer_back() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let charge = format!("{}/payments", s.url);
    let body = charge_body("t3", "success");
    let (status, first) = post_keyed(&charge, Some("t3:ProcessPayment"), &body).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_keyed(
        &format!("{}/payments/t3/refund", s.url),
        Some("t3:RefundPayment"),
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, replay) = post_keyed(&charge, Some("t3:ProcessPayment"), &body).await;
    assert_eq!(
        (status, &replay),
        (StatusCode::OK, &first),
        "the first answer, no second charge"
    );
    assert_eq!(
        rows(db.pool(), "t3").await,
        [("refunded".into(), Some("750.00".into()))]
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.idempotency_keys")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

/// Amounts in answers, which SQL builds, read as rust_decimal writes them.
#[tokio::test]
async fn answers_as_the_wire_type_writes_them() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let mut body = charge_body("t4", "success");
    body["amount"] = json!("750.5");
    let first = testkit::contract::answers_alike::<common::wire::Payment>(
        &format!("{}/payments", s.url),
        &body,
    )
    .await;
    assert_eq!(first["amount"], "750.50");
}

#[tokio::test]
async fn with_failure_injection_off_fail_payment_is_refused_and_nothing_charged() {
    let db = TestDb::new().await;
    let s = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: common::booking::FailureInjection { allowed: false },
    }))
    .await;
    let (status, body) = post(
        &format!("{}/payments", s.url),
        &charge_body("off-1", "failPayment"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "failure_injection_disabled", "{body}");
    assert_eq!(rows(db.pool(), "off-1").await, []);
    let (status, body) = post(
        &format!("{}/payments", s.url),
        &charge_body("off-1", "success"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
