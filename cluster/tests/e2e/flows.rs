//! The six sample flows, idempotent starts, and reading sagas back.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Env, pairs, steps};

const FORWARD: [&str; 5] = [
    "ReserveFlight",
    "ReserveCarRental",
    "ProcessPayment",
    "ConfirmFlight",
    "ConfirmCarRental",
];
const UNDO_ALL: [&str; 3] = [
    "RefundPayment",
    "CancelRentalReservation",
    "CancelFlightReservation",
];

/// The design's table: run type, forward steps that run (the last one fails
/// unless the saga succeeds), compensations, end status, participant rows.
fn expected(
    run_type: &str,
) -> (
    Vec<&'static str>,
    Vec<&'static str>,
    &'static str,
    [Option<&'static str>; 3],
) {
    match run_type {
        "success" => (
            FORWARD.to_vec(),
            vec![],
            "succeeded",
            [Some("confirmed"), Some("confirmed"), Some("charged")],
        ),
        "failFlightsReservation" => (
            FORWARD[..1].to_vec(),
            vec!["CancelFlightReservation"],
            "failed",
            [Some("cancelled"), None, None],
        ),
        "failCarRentalReservation" => (
            FORWARD[..2].to_vec(),
            vec!["CancelRentalReservation", "CancelFlightReservation"],
            "failed",
            [Some("cancelled"), Some("cancelled"), None],
        ),
        "failPayment" => (
            FORWARD[..3].to_vec(),
            UNDO_ALL.to_vec(),
            "failed",
            [Some("cancelled"), Some("cancelled"), Some("refunded")],
        ),
        "failFlightsConfirmation" => (
            FORWARD[..4].to_vec(),
            UNDO_ALL.to_vec(),
            "failed",
            [Some("cancelled"), Some("cancelled"), Some("refunded")],
        ),
        "failCarRentalConfirmation" => (
            FORWARD.to_vec(),
            UNDO_ALL.to_vec(),
            "failed",
            [Some("cancelled"), Some("cancelled"), Some("refunded")],
        ),
        other => panic!("no expectation for {other}"),
    }
}

#[tokio::test]
async fn the_six_run_types_follow_the_sample() {
    let env = Env::start().await;
    for run_type in [
        "success",
        "failFlightsReservation",
        "failCarRentalReservation",
        "failPayment",
        "failFlightsConfirmation",
        "failCarRentalConfirmation",
    ] {
        let trip_id = format!("trip-{run_type}");
        let answer = env
            .get(&format!("/trip?runType={run_type}&tripID={trip_id}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{run_type}: {}", answer.body);

        let (forward, undo, end, rows) = expected(run_type);
        let failed = (end == "failed").then(|| *forward.last().unwrap());
        let mut want_steps = Vec::new();
        let mut want_log = Vec::new();
        for step in forward.iter().chain(&undo) {
            let outcome = if Some(*step) == failed && forward.contains(step) {
                "failed"
            } else {
                "succeeded"
            };
            want_steps.push((*step, outcome));
            want_log.push((*step, "started"));
            want_log.push((*step, outcome));
        }
        assert_eq!(answer.body["trip_id"], trip_id);
        assert_eq!(answer.body["run_type"], run_type);
        assert_eq!(answer.body["status"], end, "{run_type}");
        assert_eq!(steps(&answer.body), pairs(&want_steps), "{run_type}: steps");
        assert!(
            answer.body["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["attempts"] == 1)
        );
        assert_eq!(
            env.log(&trip_id).await,
            pairs(&want_log),
            "{run_type}: saga_log"
        );
        // The answer comes from the driver's memory; read back, the saga is
        // the same to the microsecond.
        let read = env.get(&format!("/trips/{trip_id}")).await;
        assert_eq!(read.body, answer.body, "{run_type}: read back");
        let rows = rows.map(|r| r.map(str::to_owned));
        assert_eq!(
            env.rows(&trip_id).await,
            rows,
            "{run_type}: participant rows"
        );
    }
    let report = testkit::invariant::check(env.db.pool()).await.unwrap();
    report.assert_clean();
    assert_eq!((report.sagas, report.succeeded, report.failed), (6, 1, 5));
    env.finish().await;
}

#[tokio::test]
async fn the_same_trip_twice_is_one_saga() {
    let env = Env::start().await;
    let first = env.get("/trip?runType=failPayment&tripID=again").await;
    assert_eq!(first.status, StatusCode::OK);
    let log = env.log("again").await;
    let second = env.get("/trip?runType=failPayment&tripID=again").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.body, first.body,
        "the second call answers the existing saga"
    );
    assert_eq!(env.log("again").await, log, "and starts nothing");
    let posted = env
        .post(
            "/trips",
            &json!({ "trip_id": "again", "run_type": "failPayment" }),
        )
        .await;
    assert_eq!(
        posted.status,
        StatusCode::OK,
        "the same input by POST joins it too"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM flights.reservations").await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM cars.rentals").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM payments.payments").await, 1);

    let conflict = env.get("/trip?runType=success&tripID=again").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.body["error"], "trip_conflict");
    assert!(
        conflict.body["message"]
            .as_str()
            .unwrap()
            .contains("run_type")
    );
    let conflict = env
        .post(
            "/trips",
            &json!({ "trip_id": "again", "run_type": "failPayment", "rental": "Fiat" }),
        )
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(
        conflict.body["message"]
            .as_str()
            .unwrap()
            .contains("rental")
    );
    assert_eq!(env.log("again").await, log);
    env.finish().await;
}

#[tokio::test]
async fn concurrent_requests_for_a_new_trip_start_one_saga() {
    let env = Env::start().await;
    let answers =
        futures::future::join_all((0..16).map(|_| env.get("/trip?tripID=rush&runType=success")))
            .await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["status"], "succeeded");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.saga_log WHERE step = 'ReserveFlight' AND status = 'started'")
            .await,
        1
    );
    assert_eq!(
        env.log("rush").await.len(),
        10,
        "five steps, started and succeeded once each"
    );
    env.finish_clean().await;
}

#[tokio::test]
async fn a_posted_trip_keeps_its_fields_and_hands_outputs_on() {
    let env = Env::start().await;
    let answer = env
        .post(
            "/trips",
            &json!({
                "trip_id": "custom-1",
                "depart_city": "Boston",
                "arrive_city": "Lisbon",
                "rental": "Fiat 500",
                "amount": "99.50",
                "currency": "EUR",
            }),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "succeeded");
    assert_eq!(answer.body["input"]["depart_city"], "Boston");
    assert_eq!(
        answer.body["input"]["arrive_time"], "2021-07-09T08:00:00Z",
        "defaults fill the rest"
    );
    let (city, car, amount, currency, handed_flight, handed_car): (String, String, String, String, bool, bool) =
        sqlx::query_as(
            "SELECT f.depart_city, c.rental, p.amount::text, p.currency,
                    p.flight_booking_id = f.booking_id, p.car_booking_id = c.booking_id
             FROM flights.reservations f JOIN cars.rentals c USING (trip_id) JOIN payments.payments p USING (trip_id)
             WHERE trip_id = 'custom-1'",
        )
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(
        (
            city.as_str(),
            car.as_str(),
            amount.as_str(),
            currency.as_str()
        ),
        ("Boston", "Fiat 500", "99.50", "EUR")
    );
    assert!(
        handed_flight && handed_car,
        "the payment names the bookings the earlier steps made"
    );
    assert_eq!(
        answer.body["outputs"]["ReserveFlight"]["booking_id"],
        answer.body["outputs"]["ProcessPayment"]["flight_booking_id"]
    );

    let generated = env.get("/trip").await;
    assert_eq!(generated.status, StatusCode::OK);
    let id = generated.body["trip_id"].as_str().unwrap();
    assert!(uuid_like(id), "a trip without an id gets a UUID: {id}");
    env.finish().await;
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn sagas_are_listed_newest_first_in_pages() {
    let env = Env::start().await;
    for (trip, run_type) in [("a", "success"), ("b", "failPayment"), ("c", "success")] {
        let answer = env
            .get(&format!("/trip?tripID={trip}&runType={run_type}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let page = env.get("/trips?limit=2").await;
    assert_eq!(page.status, StatusCode::OK);
    let ids: Vec<_> = page.body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["trip_id"].clone())
        .collect();
    assert_eq!(ids, [json!("c"), json!("b")]);
    assert_eq!(page.body["sagas"][0]["steps"].as_array().unwrap().len(), 5);
    let next = page.body["next"].as_str().expect("a next cursor");
    let page = env.get(&format!("/trips?limit=2&before={next}")).await;
    let ids: Vec<_> = page.body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["trip_id"].clone())
        .collect();
    assert_eq!(ids, [json!("a")]);
    assert_eq!(page.body["next"], json!(null));
    let failed = env.get("/trips?status=failed").await;
    let ids: Vec<_> = failed.body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["trip_id"].clone())
        .collect();
    assert_eq!(ids, [json!("b")]);

    let one = env.get("/trips/b").await;
    assert_eq!(
        (one.status, &one.body["status"]),
        (StatusCode::OK, &json!("failed"))
    );
    let health = env.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = env.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    env.finish().await;
}
