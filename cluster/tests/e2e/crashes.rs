//! Failpoints: an orchestrator crashes (stops as `kill -9` would, keeping its
//! leases) at each dangerous point of a saga, and the saga still ends, with
//! the invariant kept and no second effect. A request held back past its
//! step's failure arrives after the compensation and is refused.

use std::time::Duration;

use faultproxy::{FaultProxy, Hold, HoldAt};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Env, holding, step};

/// The events of one step in the saga's log.
async fn events(env: &Env, trip_id: &str, step: &str) -> Vec<String> {
    env.log(trip_id)
        .await
        .into_iter()
        .filter(|(s, _)| s == step)
        .map(|(_, event)| event)
        .collect()
}

fn interrupted(saga: &Value, name: &str) -> bool {
    step(saga, name).is_some_and(|s| s["last_error"]["error"] == "interrupted")
}

async fn start_held(env: &Env, trip: &str, run_type: &str) {
    let answer = env
        .get(&format!("/trip?tripID={trip}&runType={run_type}&wait=0"))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
}

/// Starts `trip` with `proxy` holding the call `hold` names, waits until
/// the call is held, then crashes the orchestrator driving the saga.
async fn crash_while_held(env: &Env, proxy: &FaultProxy, hold: Hold, trip: &str, run_type: &str) {
    proxy.hold(hold);
    start_held(env, trip, run_type).await;
    holding(proxy, 1).await;
    env.cluster
        .crash_orchestrator(&env.cluster.orchestrator_url);
}

/// Starts another orchestrator set up by `configure` and waits on it for
/// the saga of `trip` to end; it must end with `status`.
async fn resumed_by(
    env: &mut Env,
    configure: impl FnOnce(&mut orchestrator::Config),
    trip: &str,
    run_type: &str,
    status: &str,
) -> Value {
    let b = env.spawn_orchestrator(configure).await;
    let answer = env
        .get_at(
            &b,
            &format!("/trip?tripID={trip}&runType={run_type}&wait=30"),
        )
        .await;
    assert_eq!(
        (answer.status, &answer.body["status"]),
        (StatusCode::OK, &Value::from(status)),
        "{}",
        answer.body
    );
    answer.body
}

/// Lets the held calls go, waits for them, and checks the invariant.
async fn release_and_check(env: Env, proxy: &FaultProxy) {
    proxy.release();
    holding(proxy, 0).await;
    env.finish_clean().await;
}

#[tokio::test]
async fn a_crash_before_a_call_is_resumed_by_the_restarted_process() {
    let (mut env, proxies) = Env::start_proxied(|c| c.orchestrator_id = Some("a".into())).await;
    let hold = Hold {
        path: "/rentals".into(),
        at: HoldAt::Request,
        count: 1,
    };
    crash_while_held(&env, &proxies.cars, hold, "crash-1", "success").await;

    // Restarted with the same identity: it reclaims its saga at once.
    let saga = resumed_by(
        &mut env,
        |c| c.orchestrator_id = Some("a".into()),
        "crash-1",
        "success",
        "succeeded",
    )
    .await;
    assert!(interrupted(&saga, "ReserveCarRental"), "{saga}");
    assert_eq!(
        events(&env, "crash-1", "ReserveCarRental").await,
        ["started", "retrying", "succeeded"]
    );

    // The held request arrives late, with the same key: no second effect.
    proxies.cars.release();
    holding(&proxies.cars, 0).await;
    assert_eq!(env.count("SELECT count(*) FROM cars.rentals").await, 1);
    release_and_check(env, &proxies.cars).await;
}

#[tokio::test]
async fn a_crash_after_the_participant_committed_gets_the_first_answer_again() {
    let (mut env, proxies) = Env::start_proxied(|c| c.orchestrator_id = Some("a".into())).await;
    let hold = Hold {
        path: "/payments".into(),
        at: HoldAt::Response,
        count: 1,
    };
    crash_while_held(&env, &proxies.payments, hold, "crash-2", "success").await;
    assert_eq!(
        env.rows("crash-2").await[2].as_deref(),
        Some("charged"),
        "the charge is done"
    );

    let saga = resumed_by(
        &mut env,
        |c| c.orchestrator_id = Some("a".into()),
        "crash-2",
        "success",
        "succeeded",
    )
    .await;
    let charged: String = sqlx::query_scalar(
        "SELECT payment_id::text FROM payments.payments WHERE trip_id = 'crash-2'",
    )
    .fetch_one(env.db.pool())
    .await
    .unwrap();
    assert_eq!(
        saga["outputs"]["ProcessPayment"]["payment_id"], charged,
        "the resent charge answered the first payment"
    );
    proxies.payments.release();
    holding(&proxies.payments, 0).await;
    assert_eq!(env.count("SELECT count(*) FROM payments.payments").await, 1);
    release_and_check(env, &proxies.payments).await;
}

#[tokio::test]
async fn a_crash_while_compensating_is_taken_over_by_another_process_after_the_lease() {
    let (mut env, proxies) = Env::start_proxied(|c| {
        c.orchestrator_id = Some("a".into());
        c.lease_secs = 1;
    })
    .await;
    let hold = Hold {
        path: "/rentals/crash-3/cancel".into(),
        at: HoldAt::Request,
        count: 1,
    };
    crash_while_held(&env, &proxies.cars, hold, "crash-3", "failPayment").await;

    let other = |c: &mut orchestrator::Config| {
        c.orchestrator_id = Some("b".into());
        c.lease_secs = 1;
    };
    let saga = resumed_by(&mut env, other, "crash-3", "failPayment", "failed").await;
    assert!(interrupted(&saga, "CancelRentalReservation"), "{saga}");
    let owner: Option<String> =
        sqlx::query_scalar("SELECT owner FROM orchestrator.sagas WHERE saga_id = 'crash-3'")
            .fetch_one(env.db.pool())
            .await
            .unwrap();
    assert_eq!(owner, None, "an ended saga holds no lease");
    release_and_check(env, &proxies.cars).await;
}

#[tokio::test]
async fn a_reserve_held_past_its_budget_arrives_after_the_cancel_and_is_refused() {
    let (env, proxies) = Env::start_proxied(|_| {}).await;
    proxies.flights.hold(Hold {
        path: "/reservations".into(),
        at: HoldAt::Request,
        count: 3,
    });
    let answer = env.get("/trip?tripID=late-1&wait=30").await;
    assert_eq!(
        (answer.status, &answer.body["status"]),
        (StatusCode::OK, &Value::from("failed"))
    );
    let reserve = step(&answer.body, "ReserveFlight").unwrap();
    assert_eq!(
        (&reserve["status"], &reserve["attempts"]),
        (&Value::from("failed"), &Value::from(3))
    );
    assert_eq!(
        reserve["last_error"]["error"], "timeout",
        "the outcome is unknown: {reserve}"
    );
    assert_eq!(
        step(&answer.body, "CancelFlightReservation").unwrap()["status"],
        "succeeded",
        "a step whose outcome is unknown is compensated"
    );
    assert_eq!(
        env.rows("late-1").await[0].as_deref(),
        Some("cancelled"),
        "a tombstone"
    );

    proxies.flights.release();
    testkit::eventually(
        "the late reserves to be refused",
        Duration::from_secs(10),
        || async {
            let status: Option<i16> = sqlx::query_scalar(
                "SELECT status FROM flights.idempotency_keys WHERE key = 'late-1:ReserveFlight'",
            )
            .fetch_optional(env.db.pool())
            .await
            .unwrap()
            .flatten();
            (status == Some(409)).then_some(())
        },
    )
    .await;
    assert_eq!(env.rows("late-1").await[0].as_deref(), Some("cancelled"));
    release_and_check(env, &proxies.flights).await;
}

#[tokio::test]
async fn a_clean_stop_hands_the_leases_back() {
    let (env, proxies) = Env::start_proxied(|c| c.orchestrator_id = Some("a".into())).await;
    proxies.flights.hold(Hold {
        path: "/reservations".into(),
        at: HoldAt::Request,
        count: 1,
    });
    start_held(&env, "stop-1", "success").await;
    holding(&proxies.flights, 1).await;
    let Env { db, cluster, .. } = env;
    cluster.stop().await.unwrap();
    let (owner, lease): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT owner, lease_until::text FROM orchestrator.sagas WHERE saga_id = 'stop-1'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        (owner, lease),
        (None, None),
        "another process may take it over at once"
    );
    proxies.flights.release();
}
