//! Operator actions (`POST /sagas/{definition}/{id}/retry|resolve|abort`):
//! each does what it says, is logged with its reason and actor, is refused
//! with 409 where the saga's state does not allow it, and is fenced against
//! the saga's driver, another replica and another action.

use std::time::Duration;

use faultproxy::{Faults, Hold, HoldAt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Env, Proxies, holding, pairs, scrape, step, steps, value};

/// Attempts that outlast a call held in the proxy, so that the saga waits
/// for it instead of retrying past it.
fn patient(config: &mut orchestrator::Config) {
    config.retry.attempt_timeout_ms = 10_000;
}

fn by(reason: &str) -> Value {
    json!({ "reason": reason, "actor": "ops@example.com" })
}

/// Every participant call answered 503 without reaching the participant.
fn unavailable() -> Faults {
    Faults {
        unavailable_rate: 1.0,
        ..Faults::default()
    }
}

/// Orchestrators `a` (the cluster's) and `b` (its URL returned), both
/// calling the participants through the proxies.
async fn two_replicas() -> (Env, Proxies, String) {
    let (mut env, proxies) = Env::start_proxied(|c| {
        patient(c);
        c.orchestrator_id = Some("a".into());
    })
    .await;
    let b = env
        .spawn_orchestrator(|c| {
            patient(c);
            c.orchestrator_id = Some("b".into());
        })
        .await;
    (env, proxies, b)
}

async fn start(env: &Env, trip: &str) {
    let answer = env.get(&format!("/trip?tripID={trip}&wait=0")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
}

/// The saga's log rows an operator's action wrote: (step, status, detail).
async fn action_rows(env: &Env, trip: &str) -> Vec<(String, String, Value)> {
    sqlx::query_as(
        "SELECT step, status::text, detail FROM orchestrator.saga_log
         WHERE saga_id = $1 AND detail ? 'action' ORDER BY seq",
    )
    .bind(trip)
    .fetch_all(env.db.pool())
    .await
    .expect("read saga_log")
}

/// The steps that have more than one final (`succeeded` or `failed`) row.
async fn finished_twice(env: &Env, trip: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT step FROM orchestrator.saga_log
         WHERE saga_id = $1 AND status IN ('succeeded', 'failed')
         GROUP BY step HAVING count(*) > 1",
    )
    .bind(trip)
    .fetch_all(env.db.pool())
    .await
    .expect("read saga_log")
}

/// Awaits the orchestrator at `base` driving no saga.
async fn driving_none(base: &str) {
    testkit::eventually("the driver to stop", Duration::from_secs(10), || async {
        let text = scrape(base).await;
        let driven: f64 = ["running", "compensating"]
            .iter()
            .map(|status| {
                value(
                    &text,
                    &format!("sagas_driven{{definition=\"travel\",status=\"{status}\"}}"),
                )
            })
            .sum();
        (driven == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn abort_stops_a_running_saga_and_compensates_from_its_step() {
    let (env, proxies) = Env::start_proxied(patient).await;
    proxies.cars.hold(Hold {
        path: "/rentals".into(),
        at: HoldAt::Request,
        count: 1,
    });
    start(&env, "abort-1").await;
    holding(&proxies.cars, 1).await;
    let refused = env.post("/sagas/travel/abort-1/retry", &by("hurry")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("has not failed an attempt yet"),
        "{}",
        refused.body
    );

    let answer = env
        .post("/sagas/travel/abort-1/abort", &by("customer cancelled"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_ne!(answer.body["status"], "running", "{}", answer.body);
    let saga = env
        .saga_when("abort-1", "the saga to fail", |s| s["status"] == "failed")
        .await;
    assert_eq!(
        steps(&saga),
        pairs(&[
            ("ReserveFlight", "succeeded"),
            ("ReserveCarRental", "failed"),
            ("CancelRentalReservation", "succeeded"),
            ("CancelFlightReservation", "succeeded"),
        ])
    );
    let rows = action_rows(&env, "abort-1").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (step_name, status, detail) = &rows[0];
    assert_eq!(
        (step_name.as_str(), status.as_str()),
        ("ReserveCarRental", "failed")
    );
    assert_eq!(detail["action"], "abort");
    assert_eq!(detail["reason"], "customer cancelled");
    assert_eq!(detail["actor"], "ops@example.com");
    assert_eq!(
        step(&saga, "ReserveCarRental").unwrap()["last_error"]["action"],
        "abort"
    );

    // The reserve held back arrives after its cancel, and is refused.
    proxies.cars.release();
    testkit::eventually("the late reserve", Duration::from_secs(10), || async {
        (proxies.cars.holding() == 0).then_some(())
    })
    .await;
    assert!(finished_twice(&env, "abort-1").await.is_empty());
    let again = env.post("/sagas/travel/abort-1/abort", &by("twice")).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["error"], "action_refused");
    env.finish_clean().await;
}

#[tokio::test]
async fn retry_attempts_a_waiting_compensation_now() {
    // After its second failure a compensation waits 10 s.
    let (env, proxies) = Env::start_proxied(|c| {
        c.retry.retry_multiplier = 1000.0;
        c.retry.compensation_max_delay_ms = 20_000;
        c.lease_secs = 60;
    })
    .await;
    // The car rental is never reached: its step fails, outcome unknown,
    // and its cancel keeps failing.
    proxies.cars.set_faults(unavailable());
    start(&env, "retry-1").await;
    env.saga_when("retry-1", "the cancel to fail twice", |s| {
        step(s, "CancelRentalReservation").is_some_and(|c| c["attempts"] == 2)
    })
    .await;

    proxies.cars.set_faults(Faults::default());
    let answer = env
        .post("/sagas/travel/retry-1/retry", &by("cars-svc is back"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // Well before the 10 s the compensation would have waited.
    testkit::eventually("the saga to fail", Duration::from_secs(5), || async {
        let saga = env.get("/trips/retry-1").await.body;
        (saga["status"] == "failed").then_some(())
    })
    .await;
    let rows = action_rows(&env, "retry-1").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("CancelRentalReservation", "retrying")
    );
    assert_eq!(rows[0].2["reason"], "cars-svc is back");
    assert_eq!(env.rows("retry-1").await[1].as_deref(), Some("cancelled"));
    assert!(finished_twice(&env, "retry-1").await.is_empty());
    env.finish_clean().await;
}

#[tokio::test]
async fn resolve_marks_a_stuck_compensation_done_and_the_saga_goes_on() {
    let (env, proxies) = Env::start_proxied(|c| {
        patient(c);
        c.retry.stuck_after_secs = 0;
    })
    .await;
    proxies.cars.set_faults(unavailable());
    start(&env, "resolve-1").await;
    env.saga_when("resolve-1", "the cancel to fail", |s| {
        step(s, "CancelRentalReservation").is_some_and(|c| c["attempts"].as_i64() >= Some(2))
    })
    .await;
    // Another saga, running: not stuck.
    proxies.flights.hold(Hold {
        path: "/reservations".into(),
        at: HoldAt::Request,
        count: 1,
    });
    start(&env, "healthy-1").await;
    holding(&proxies.flights, 1).await;

    let stuck = env.get("/sagas?stuck=true").await;
    assert_eq!(stuck.status, StatusCode::OK, "{}", stuck.body);
    let ids: Vec<&Value> = stuck.body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&json!("resolve-1")]);
    let counts = env.get("/sagas/counts").await;
    assert_eq!(
        counts.body,
        json!({ "running": 1, "compensating": 1, "stuck": 1, "succeeded": 0, "failed": 0,
                "counted_up_to": 10_000, "newest": "healthy-1" })
    );
    let refused = env
        .post("/sagas/travel/healthy-1/resolve", &by("nothing to resolve"))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("running forward"),
        "{}",
        refused.body
    );
    let refused = env
        .post("/sagas/travel/resolve-1/abort", &by("already compensating"))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);

    let answer = env
        .post(
            "/sagas/travel/resolve-1/resolve",
            &by("rental cancelled by phone"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let saga = env
        .saga_when("resolve-1", "the saga to fail", |s| s["status"] == "failed")
        .await;
    assert_eq!(
        steps(&saga),
        pairs(&[
            ("ReserveFlight", "succeeded"),
            ("ReserveCarRental", "failed"),
            ("CancelRentalReservation", "succeeded"),
            ("CancelFlightReservation", "succeeded"),
        ])
    );
    let rows = action_rows(&env, "resolve-1").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("CancelRentalReservation", "succeeded")
    );
    assert_eq!(env.rows("resolve-1").await[0].as_deref(), Some("cancelled"));
    let stuck = env.get("/sagas?stuck=true").await;
    assert_eq!(stuck.body["sagas"], json!([]), "{}", stuck.body);

    proxies.cars.set_faults(Faults::default());
    proxies.flights.release();
    env.saga_when("healthy-1", "the other saga to end", |s| {
        s["status"] == "succeeded"
    })
    .await;
    let counts = env.get("/sagas/counts?definition=travel").await;
    assert_eq!(
        counts.body,
        json!({ "running": 0, "compensating": 0, "stuck": 0, "succeeded": 1, "failed": 1,
                "counted_up_to": 10_000, "newest": "healthy-1" })
    );
    env.finish_clean().await;
}

#[tokio::test]
async fn an_action_on_another_replica_fences_the_driver() {
    let (env, proxies, b) = two_replicas().await;
    // A's reserve of the car is done, its answer held back.
    proxies.cars.hold(Hold {
        path: "/rentals".into(),
        at: HoldAt::Response,
        count: 1,
    });
    start(&env, "fence-1").await;
    holding(&proxies.cars, 1).await;

    let answer = env
        .post_at(&b, "/sagas/travel/fence-1/abort", &by("wrong dates"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    env.saga_when("fence-1", "the saga to fail", |s| s["status"] == "failed")
        .await;
    assert_eq!(env.rows("fence-1").await[1].as_deref(), Some("cancelled"));

    // A gets its answer now, and its write is fenced: it stops.
    proxies.cars.release();
    driving_none(&env.cluster.orchestrator_url).await;
    let saga = env.get("/trips/fence-1").await.body;
    assert_eq!(saga["status"], "failed");
    assert_eq!(step(&saga, "ReserveCarRental").unwrap()["status"], "failed");
    assert!(finished_twice(&env, "fence-1").await.is_empty());
    env.finish_clean().await;
}

#[tokio::test]
async fn two_actions_at_once_on_two_replicas_take_effect_once() {
    let (env, proxies, b) = two_replicas().await;
    proxies.payments.hold(Hold {
        path: "/payments".into(),
        at: HoldAt::Request,
        count: 1,
    });
    start(&env, "race-1").await;
    holding(&proxies.payments, 1).await;

    let a = env.cluster.orchestrator_url.clone();
    let (from_a, from_b) = (by("from a"), by("from b"));
    let (first, second) = tokio::join!(
        env.post_at(&a, "/sagas/travel/race-1/abort", &from_a),
        env.post_at(&b, "/sagas/travel/race-1/abort", &from_b),
    );
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} {}",
        first.body,
        second.body
    );
    env.saga_when("race-1", "the saga to fail", |s| s["status"] == "failed")
        .await;
    let rows = action_rows(&env, "race-1").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("ProcessPayment", "failed")
    );
    proxies.payments.release();
    testkit::eventually("the late charge", Duration::from_secs(10), || async {
        (proxies.payments.holding() == 0).then_some(())
    })
    .await;
    assert!(finished_twice(&env, "race-1").await.is_empty());
    env.finish_clean().await;
}

#[tokio::test]
async fn actions_refuse_what_they_cannot_do() {
    let env = Env::start().await;
    let done = env.get("/trip?tripID=done-1").await;
    assert_eq!(done.body["status"], "succeeded", "{}", done.body);

    for action in ["retry", "resolve", "abort"] {
        let answer = env
            .post(&format!("/sagas/travel/done-1/{action}"), &by("late"))
            .await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
        assert_eq!(answer.body["error"], "action_refused");
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("has ended (succeeded)"),
            "{}",
            answer.body
        );
    }
    let cases = [
        ("/sagas/travel/nobody/abort", by("x"), StatusCode::NOT_FOUND),
        ("/sagas/other/done-1/abort", by("x"), StatusCode::NOT_FOUND),
        (
            "/sagas/travel/done-1/abort",
            json!({"actor": "ops"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/sagas/travel/done-1/abort",
            json!({"reason": " ", "actor": "ops"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/sagas/travel/done-1/abort",
            json!({"reason": "x", "actor": "ops", "force": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/sagas/travel/bad%20id/abort",
            by("x"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, body, status) in cases {
        let answer = env.post(path, &body).await;
        assert_eq!(answer.status, status, "{path} {body}: {}", answer.body);
        assert!(answer.body["error"].is_string(), "{}", answer.body);
    }
    let bad = env.get("/sagas?stuck=maybe").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(action_rows(&env, "done-1").await.is_empty());
    env.finish().await;
}
