//! More sagas than calls allowed in flight to a participant: they wait their
//! turn in line, and a wait, however long, spends none of a step's attempts.
//! More starts than slots: refused at once, before anything is written, and
//! sagas taken over take slots as new ones do. A slow participant holds no
//! more connections than its calls allowed in flight, and retries to a
//! failing one wait for its retry budget.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster::Participant;
use faultproxy::{Faults, Hold, HoldAt};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::json;

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
    env.finish_clean().await;
}

#[tokio::test]
async fn a_start_past_the_slots_is_refused_at_once_and_a_duplicate_still_answered() {
    let (env, proxies) = Env::start_proxied(|c| {
        c.limits.max_active_sagas = 2;
        c.limits.start_queue_ms = 100;
        // The held calls keep their slots until they are let go.
        c.retry.attempt_timeout_ms = 5_000;
    })
    .await;
    proxies.flights.hold(Hold {
        path: "/reservations".into(),
        at: HoldAt::Request,
        count: 2,
    });
    for trip_id in ["slot-1", "slot-2"] {
        let answer = env.get(&format!("/trip?tripID={trip_id}&wait=0")).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    holding(&proxies.flights, 2).await;

    let refused = env.get("/trip?tripID=shed-1&wait=0").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers[RETRY_AFTER], "1");
    assert_eq!(refused.body["error"], "overloaded", "{}", refused.body);
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.contains("MAX_ACTIVE_SAGAS"), "{message}");
    let generic = env
        .post("/sagas/travel?wait=0", &json!({"id": "shed-2"}))
        .await;
    assert_eq!(generic.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas WHERE saga_id LIKE 'shed-%'")
            .await,
        0,
        "nothing was written for a refused start"
    );

    // A start of a saga that exists takes no slot: it is answered as ever.
    let again = env.get("/trip?tripID=slot-1&wait=0").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["trip_id"], "slot-1");
    let other = env
        .get("/trip?tripID=slot-1&runType=failPayment&wait=0")
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);

    proxies.flights.release();
    for trip_id in ["slot-1", "slot-2"] {
        let saga = env
            .saga_when(trip_id, "a saga in a slot to end", |saga| {
                saga["status"] == "succeeded"
            })
            .await;
        assert_eq!(step(&saga, "ReserveFlight").unwrap()["attempts"], 1);
    }
    let later = env.get("/trip?tripID=shed-1").await;
    assert_eq!(
        (later.status, &later.body["status"]),
        (StatusCode::OK, &json!("succeeded")),
        "{}",
        later.body
    );
    env.finish_clean().await;
}

#[tokio::test]
async fn sagas_taken_over_take_slots_and_new_starts_are_refused_meanwhile() {
    // Flights is not served yet: every saga waits in its first call.
    let mut env = Env::start_with(&[Participant::Flights], |c| c.lease_secs = 1).await;
    for n in 1..=5 {
        let answer = env.get(&format!("/trip?tripID=taken-{n}&wait=0")).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    env.cluster
        .crash_orchestrator(&env.cluster.orchestrator_url);
    // B has two slots, and attempts long enough to keep them.
    let b = env
        .spawn_orchestrator(|c| {
            c.orchestrator_id = Some("b".into());
            c.limits.max_active_sagas = 2;
            c.limits.start_queue_ms = 100;
            c.retry.attempt_timeout_ms = 5_000;
        })
        .await;
    let owned_by_b = "SELECT count(*) FROM orchestrator.sagas WHERE owner = 'b'";
    testkit::eventually(
        "B to take over two sagas",
        std::time::Duration::from_secs(10),
        || async { (env.count(owned_by_b).await == 2).then_some(()) },
    )
    .await;
    let refused = env.get_at(&b, "/trip?tripID=new-1&wait=0").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(
        env.count(owned_by_b).await,
        2,
        "B claims no saga it has no slot for"
    );

    env.cluster.serve_held(Participant::Flights).await.unwrap();
    for n in 1..=5 {
        let answer = env
            .get_at(&b, &format!("/trip?tripID=taken-{n}&wait=30"))
            .await;
        assert_eq!(
            (answer.status, &answer.body["status"]),
            (StatusCode::OK, &json!("succeeded")),
            "{}",
            answer.body
        );
    }
    env.finish_clean().await;
}

#[tokio::test]
async fn a_slow_participant_under_load_keeps_its_connections_bounded_and_starts_are_shed() {
    let (env, proxies) = Env::start_proxied(|c| {
        c.limits.max_active_sagas = 4;
        c.limits.max_waiting_starts = 4;
        c.limits.start_queue_ms = 5;
        c.participant_max_in_flight = 2;
        c.retry.attempt_timeout_ms = 2_000;
    })
    .await;
    // Every payment call takes 300 ms: the slots fill with sagas waiting
    // for it, and starts past them are refused.
    proxies.payments.set_faults(Faults {
        delay_rate: 1.0,
        min_delay_ms: 300,
        max_delay_ms: 300,
        ..Faults::default()
    });
    let starts = (0..30).map(|i| {
        let env = &env;
        async move {
            let trip_id = format!("slow-{i}");
            let answer = env.get(&format!("/trip?tripID={trip_id}&wait=0")).await;
            (trip_id, answer.status)
        }
    });
    let answers = futures::future::join_all(starts).await;
    let accepted: Vec<&str> = answers
        .iter()
        .filter(|(_, status)| *status == StatusCode::ACCEPTED)
        .map(|(trip_id, _)| trip_id.as_str())
        .collect();
    let refused = answers
        .iter()
        .filter(|(_, status)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(
        accepted.len() + refused,
        answers.len(),
        "every start is accepted or refused: {answers:?}"
    );
    assert!(accepted.len() >= 4, "the slots were used: {answers:?}");
    assert!(
        refused > 0,
        "starts past the slots were refused: {answers:?}"
    );
    for trip_id in &accepted {
        let saga = env
            .saga_when(trip_id, "an accepted saga to end", |saga| {
                saga["status"] == "succeeded"
            })
            .await;
        assert_eq!(step(&saga, "ProcessPayment").unwrap()["attempts"], 1);
    }
    let peak = proxies
        .payments
        .stats()
        .peak_in_flight
        .load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&peak),
        "at most PARTICIPANT_MAX_IN_FLIGHT calls to the slow participant at once, not {peak}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        i64::try_from(accepted.len()).unwrap(),
        "nothing was written for a refused start"
    );
    // The participant is quick again: a start goes through at once.
    proxies.payments.set_faults(Faults::default());
    let after = env.get("/trip?tripID=after-the-slowness").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    assert_eq!(after.body["status"], "succeeded", "{}", after.body);
    env.finish_clean().await;
}

#[tokio::test]
async fn retries_past_a_participants_budget_wait_and_every_saga_still_ends() {
    // No share of first attempts, one retry a second: ten in the window.
    let (env, proxies) = Env::start_proxied(|c| {
        c.retry.retry_budget_percent = 0.0;
        c.retry.retry_budget_min_per_sec = 1;
        c.retry.attempt_timeout_ms = 500;
    })
    .await;
    proxies.payments.set_faults(Faults {
        unavailable_rate: 1.0,
        ..Faults::default()
    });
    for i in 0..8 {
        let answer = env.get(&format!("/trip?tripID=budget-{i}&wait=0")).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    // A retry waits for the budget for an attempt's time, and says so.
    let waiting = "SELECT count(*) FROM orchestrator.saga_log
                   WHERE detail->>'message' LIKE '%RETRY_BUDGET_PERCENT%'";
    testkit::eventually(
        "a retry to wait for the budget",
        Duration::from_secs(10),
        || async { (env.count(waiting).await > 0).then_some(()) },
    )
    .await;
    // By then every call to payments is a first attempt (whose `started`
    // row is written before it is sent) or one of the ten retries.
    let sent = i64::try_from(proxies.payments.stats().requests.load(Ordering::SeqCst)).unwrap();
    let first = env
        .count(
            "SELECT count(*) FROM orchestrator.saga_log
             WHERE step IN ('ProcessPayment', 'RefundPayment') AND status = 'started'",
        )
        .await;
    assert!(
        sent - first <= 10,
        "{sent} calls for {first} first attempts: more retries than the budget"
    );
    // The participant comes back: the waiting retries go on, and every saga
    // ends, compensated or not.
    proxies.payments.set_faults(Faults::default());
    for i in 0..8 {
        env.saga_when(&format!("budget-{i}"), "a saga to end", |saga| {
            matches!(saga["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    }
    env.finish_clean().await;
}

#[tokio::test]
async fn a_client_past_its_start_rate_gets_429_with_retry_after_and_nothing_is_started() {
    let env = Env::start_with(&[], |c| {
        c.limits.start_rate_per_client = 1;
        c.limits.start_burst_per_client = 2;
    })
    .await;
    // Two starts of the burst, by either start route, are taken...
    let first = env.get("/trip?runType=success&tripID=rate-1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let second = env
        .post("/sagas/travel", &json!({ "id": "rate-2", "input": {} }))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    // ...the third, within the same second, is not.
    for refused in [
        env.get("/trip?runType=success&tripID=rate-3").await,
        env.post("/trips", &json!({ "trip_id": "rate-4" })).await,
    ] {
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.body
        );
        assert_eq!(refused.body["error"], "too_many_starts");
        assert!(
            refused.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("START_RATE_PER_CLIENT")),
            "{}",
            refused.body
        );
        let retry_after: u64 = refused.headers[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        2,
        "the refused starts wrote nothing"
    );
    // Reads are not starts.
    assert_eq!(env.get("/trips/rate-1").await.status, StatusCode::OK);
    let metrics = crate::support::scrape(&env.cluster.orchestrator_url).await;
    assert_eq!(
        crate::support::value(&metrics, "saga_starts_rate_limited_total"),
        2.0
    );
    env.finish_clean().await;
}
