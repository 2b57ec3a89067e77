//! cars-svc over real HTTP on a fresh database.

use cars_svc::{AppState, app};
use common::db::Db;
use serde_json::{Value, json};
use testkit::contract::Booking;
use testkit::{TestDb, TestServer};

fn reserve_body(trip_id: &str, run_type: &str) -> Value {
    json!({
        "trip_id": trip_id,
        "rental": "BMW",
        "rental_from": "2021-07-09T00:00:00.000Z",
        "rental_to": "2021-07-17T00:00:00.000Z",
        "run_type": run_type,
    })
}

#[tokio::test]
async fn keeps_the_booking_contract() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    Booking {
        url: &server.url,
        collection: "/rentals",
        table: "cars.rentals",
        reserve_body,
        fail_reserve: "failCarRentalReservation",
        fail_confirm: "failCarRentalConfirmation",
    }
    .check(db.pool())
    .await;
}

#[tokio::test]
async fn stores_the_sample_fields() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    let (status, body) = testkit::contract::post(
        &format!("{}/rentals", server.url),
        &reserve_body("t", "success"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let row: (String, String, String) = sqlx::query_as(
        "SELECT rental, status::text, to_char(rental_from AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM cars.rentals WHERE trip_id = 't'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        ("BMW".into(), "pending".into(), "2021-07-09 00:00".into())
    );
}

/// Timestamps in answers, which SQL builds, read as chrono writes them.
#[tokio::test]
async fn answers_as_the_wire_type_writes_them() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    let mut body = reserve_body("t", "success");
    body["rental_from"] = json!("2021-07-09T00:00:00.25Z");
    body["rental_to"] = json!("2021-07-17T00:00:00.000001Z");
    let url = format!("{}/rentals", server.url);
    let first = testkit::contract::answers_alike::<common::wire::CarRental>(&url, &body).await;
    assert_eq!(first["rental_from"], "2021-07-09T00:00:00.250Z");
    assert_eq!(first["rental_to"], "2021-07-17T00:00:00.000001Z");
}
