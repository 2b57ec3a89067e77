//! More sagas than calls allowed in flight to a participant: they wait their
//! turn in line, and a wait, however long, spends none of a step's attempts.

use faultproxy::{Hold, HoldAt};
use reqwest::StatusCode;

use crate::support::{Env, holding, step};

#[tokio::test]
async fn a_saga_waiting_in_line_longer_than_an_attempt_spends_no_attempt_and_succeeds() {
    // One call in flight to each participant, and one attempt per step: a
    // wait that counted as an attempt would fail the saga.
    let (env, proxies) = Env::start_proxied(|c| {
        c.participant_max_in_flight = 1;
        c.retry.attempt_timeout_ms = 1_000;
        c.retry.step_max_attempts = 1;
    })
    .await;
    // The first two flight reservations are held until their attempts run
    // out: each keeps the one turn for an attempt's time, then fails.
    proxies.flights.hold(Hold {
        path: "/reservations".into(),
        at: HoldAt::Request,
        count: 2,
    });
    for trip_id in ["ahead-1", "ahead-2", "behind"] {
        let answer = env.get(&format!("/trip?tripID={trip_id}&wait=0")).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        if trip_id == "ahead-1" {
            holding(&proxies.flights, 1).await;
        }
    }
    // `behind` waits about two attempts' time in line, then goes through.
    let ended =
        |saga: &serde_json::Value| matches!(saga["status"].as_str(), Some("succeeded" | "failed"));
    let saga = env
        .saga_when("behind", "the saga behind to end", ended)
        .await;
    assert_eq!(saga["status"], "succeeded", "{saga}");
    let flight = step(&saga, "ReserveFlight").unwrap();
    assert_eq!(flight["attempts"], 1, "{saga}");
    // Its wait was logged, which renewed its lease.
    assert_eq!(flight["last_error"]["error"], "queue wait", "{saga}");
    for trip_id in ["ahead-1", "ahead-2"] {
        let saga = env.saga_when(trip_id, "a saga ahead to end", ended).await;
        assert_eq!(saga["status"], "failed", "{saga}");
    }
    proxies.flights.release();
    holding(&proxies.flights, 0).await;
    testkit::invariant::check(env.db.pool())
        .await
        .unwrap()
        .assert_clean();
    env.finish().await;
}
