//! flights-svc over real HTTP on a fresh database.

use common::db::Db;
use flights_svc::{AppState, app};
use serde_json::{Value, json};
use testkit::contract::Booking;
use testkit::{TestDb, TestServer};

fn reserve_body(trip_id: &str, run_type: &str) -> Value {
    json!({
        "trip_id": trip_id,
        "depart_city": "Detroit",
        "depart_time": "2021-07-07T06:00:00.000Z",
        "arrive_city": "Frankfurt",
        "arrive_time": "2021-07-09T08:00:00.000Z",
        "run_type": run_type,
    })
}

#[tokio::test]
async fn keeps_the_booking_contract() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
    }))
    .await;
    Booking {
        url: &server.url,
        collection: "/reservations",
        table: "flights.reservations",
        reserve_body,
        fail_reserve: "failFlightsReservation",
        fail_confirm: "failFlightsConfirmation",
    }
    .check(db.pool())
    .await;
}

#[tokio::test]
async fn stores_the_sample_fields() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
    }))
    .await;
    let (status, body) = testkit::contract::post(
        &format!("{}/reservations", server.url),
        &reserve_body("t", "success"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let row: (String, String, String) = sqlx::query_as(
        "SELECT depart_city, arrive_city, to_char(depart_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM flights.reservations WHERE trip_id = 't'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "Detroit".into(),
            "Frankfurt".into(),
            "2021-07-07 06:00".into()
        )
    );
}

/// Timestamps in answers, which SQL builds, read as chrono writes them.
#[tokio::test]
async fn answers_as_the_wire_type_writes_them() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
    }))
    .await;
    let mut body = reserve_body("t", "success");
    body["depart_time"] = json!("2021-07-07T06:00:00.5Z");
    body["arrive_time"] = json!("2021-07-09T08:00:00.123456Z");
    let url = format!("{}/reservations", server.url);
    let first =
        testkit::contract::answers_alike::<common::wire::FlightReservation>(&url, &body).await;
    assert_eq!(first["depart_time"], "2021-07-07T06:00:00.500Z");
    assert_eq!(first["arrive_time"], "2021-07-09T08:00:00.123456Z");
}
