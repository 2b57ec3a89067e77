//! `GET /metrics` on every service, in the Prometheus text format: a trip's
//! sagas, steps, compensations and requests show in the series, by
//! definition, step and route, never by saga id.

use std::time::Duration;

use faultproxy::Faults;
use reqwest::StatusCode;

use crate::support::{Env, scrape, value};

#[tokio::test]
async fn every_service_serves_metrics_and_a_failed_trip_shows_in_them() {
    let env = Env::start().await;
    let trip = env.get("/trip?tripID=metered&runType=failPayment").await;
    assert_eq!(trip.body["status"], "failed", "{}", trip.body);

    let text = scrape(&env.cluster.orchestrator_url).await;
    let travel = |rest: &str| format!("{{definition=\"travel\"{rest}}}");
    assert_eq!(
        value(&text, &format!("sagas_started_total{}", travel(""))),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("sagas_ended_total{}", travel(",outcome=\"failed\""))
        ),
        1.0
    );
    for (step, outcome) in [
        ("ReserveFlight", "succeeded"),
        ("ProcessPayment", "failed"),
        ("RefundPayment", "succeeded"),
    ] {
        let series = format!(
            "saga_step_attempt_duration_seconds_count{}",
            travel(&format!(",step=\"{step}\",outcome=\"{outcome}\""))
        );
        assert_eq!(value(&text, &series), 1.0, "{series}");
    }
    for step in [
        "RefundPayment",
        "CancelRentalReservation",
        "CancelFlightReservation",
    ] {
        let series = format!(
            "saga_compensations_total{}",
            travel(&format!(",step=\"{step}\""))
        );
        assert_eq!(value(&text, &series), 1.0, "{series}");
    }
    assert_eq!(
        value(
            &text,
            "http_request_duration_seconds_count{method=\"GET\",route=\"/trip\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "saga_slots"), 128.0);
    assert!(value(&text, "saga_writer_batch_size_count") >= 1.0);
    assert!(!text.contains("metered"), "no saga id in a label: {text}");
    // The saga's driver gives its slot back once it has answered.
    testkit::eventually("the slot to be free", Duration::from_secs(5), || async {
        let text = scrape(&env.cluster.orchestrator_url).await;
        (value(&text, "saga_slots_in_use") == 0.0
            && value(
                &text,
                &format!("sagas_driven{}", travel(",status=\"compensating\"")),
            ) == 0.0)
            .then_some(())
    })
    .await;

    // A participant counts its own requests, by route as matched.
    let payments = scrape(&env.cluster.payments_url).await;
    let refused =
        "http_request_duration_seconds_count{method=\"POST\",route=\"/payments\",status=\"422\"}";
    assert_eq!(value(&payments, refused), 1.0, "{payments}");
    let refund = "http_request_duration_seconds_count{method=\"POST\",route=\"/payments/{trip_id}/refund\",status=\"200\"}";
    assert_eq!(value(&payments, refund), 1.0, "{payments}");
    let flights = scrape(&env.cluster.flights_url).await;
    assert_eq!(
        value(
            &flights,
            "http_request_duration_seconds_count{method=\"POST\",route=\"/reservations\",status=\"200\"}"
        ),
        1.0,
        "{flights}"
    );
    env.finish_clean().await;
}

#[tokio::test]
async fn a_compensation_failing_past_stuck_after_counts_as_stuck_until_it_succeeds() {
    let (env, proxies) = Env::start_proxied(|c| c.retry.stuck_after_secs = 0).await;
    let stuck = "saga_compensations_stuck{definition=\"travel\",step=\"CancelRentalReservation\"}";
    // The car rental's cancel fails until the participant is back.
    proxies.cars.set_faults(Faults {
        unavailable_rate: 1.0,
        ..Faults::default()
    });
    let start = env
        .get("/trip?tripID=stuck&runType=failPayment&wait=0")
        .await;
    assert_eq!(start.status, StatusCode::ACCEPTED, "{}", start.body);
    let orchestrator = env.cluster.orchestrator_url.clone();
    testkit::eventually(
        "the compensation to count as stuck",
        Duration::from_secs(10),
        || async { (value(&scrape(&orchestrator).await, stuck) == 1.0).then_some(()) },
    )
    .await;
    proxies.cars.set_faults(Faults::default());
    env.saga_when("stuck", "the saga to end", |saga| {
        saga["status"] == "failed"
    })
    .await;
    testkit::eventually(
        "the stuck count to drop",
        Duration::from_secs(5),
        || async { (value(&scrape(&orchestrator).await, stuck) == 0.0).then_some(()) },
    )
    .await;
    env.finish_clean().await;
}

#[tokio::test]
async fn participants_count_their_replays_and_the_tombstones_they_write() {
    let env = Env::start().await;
    // The payment is refused, so its refund finds no charge: a tombstone.
    // The flight and the car are cancelled from pending: no tombstone.
    let trip = env.get("/trip?tripID=tomb&runType=failPayment").await;
    assert_eq!(trip.body["status"], "failed", "{}", trip.body);
    let tombstones = "tombstones_written_total";
    let replays = "idempotent_replays_total";
    let payments = scrape(&env.cluster.payments_url).await;
    assert_eq!(value(&payments, tombstones), 1.0, "{payments}");
    assert_eq!(value(&payments, replays), 0.0, "{payments}");
    for base in [&env.cluster.flights_url, &env.cluster.cars_url] {
        let text = scrape(base).await;
        assert_eq!(value(&text, tombstones), 0.0, "{base}: {text}");
    }

    // The refund again under its key is a replay, with no second effect;
    // under a new key it finds the trip refunded: neither is a tombstone.
    let http = reqwest::Client::new();
    let payments_key = env.cluster.key(cluster::Participant::Payments);
    for key in ["tomb:RefundPayment", "by-hand"] {
        let url = format!("{}/payments/tomb/refund", env.cluster.payments_url);
        let answer = http
            .post(&url)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .headers(crate::support::signed(
                &payments_key,
                &reqwest::Method::POST,
                &url,
                b"{}",
            ))
            .body("{}")
            .send()
            .await
            .expect("POST refund");
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let payments = scrape(&env.cluster.payments_url).await;
    assert_eq!(value(&payments, replays), 1.0, "{payments}");
    assert_eq!(value(&payments, tombstones), 1.0, "{payments}");
    env.finish_clean().await;
}
