//! A participant that is down: its calls are retried; past the retry budget
//! the saga compensates, staying `compensating` until the participant is
//! back, then `failed`, with the invariant kept.

use cluster::Participant;
use reqwest::StatusCode;
use reqwest::header::LOCATION;

use crate::support::{Env, step};

#[tokio::test]
async fn a_participant_down_past_the_budget_makes_the_saga_compensate_until_it_is_back() {
    let mut env = Env::start_with(&[Participant::Payments], |_| {}).await;
    let answer = env.get("/trip?tripID=down-1&wait=0").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.headers[LOCATION], "/trips/down-1");
    assert_eq!(answer.body["status"], "running");

    let saga = env
        .saga_when(
            "down-1",
            "the refund to be retried while compensating",
            |saga| {
                saga["status"] == "compensating"
                    && step(saga, "RefundPayment")
                        .is_some_and(|s| s["attempts"].as_i64() >= Some(2))
            },
        )
        .await;
    let payment = step(&saga, "ProcessPayment").expect("the payment step ran");
    assert_eq!(payment["status"], "failed");
    assert_eq!(payment["attempts"], 3, "the whole retry budget was spent");
    let refund = step(&saga, "RefundPayment").unwrap();
    assert_eq!(refund["status"], "running");
    assert!(
        refund["last_error"]["error"].is_string(),
        "the last error is visible: {refund}"
    );
    let retrying = env
        .count("SELECT count(*) FROM orchestrator.saga_log WHERE step = 'ProcessPayment' AND status = 'retrying'")
        .await;
    assert_eq!(retrying, 2, "two failed attempts were retried");

    env.cluster.serve_held(Participant::Payments).await.unwrap();
    let saga = env
        .saga_when("down-1", "the saga to fail once payments is back", |saga| {
            saga["status"] == "failed"
        })
        .await;
    let names: Vec<_> = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].clone())
        .collect();
    assert_eq!(
        names,
        [
            "ReserveFlight",
            "ReserveCarRental",
            "ProcessPayment",
            "RefundPayment",
            "CancelRentalReservation",
            "CancelFlightReservation"
        ]
    );
    assert_eq!(
        env.rows("down-1").await,
        [
            Some("cancelled".to_owned()),
            Some("cancelled".to_owned()),
            Some("refunded".to_owned())
        ]
    );
    env.finish_clean().await;
}

#[tokio::test]
async fn a_participant_down_for_a_while_is_retried_and_the_saga_succeeds() {
    let mut env = Env::start_with(&[Participant::Cars], |config| {
        config.retry.step_max_attempts = 1_000;
    })
    .await;
    let answer = env.get("/trip?tripID=slow-1&wait=0").await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    env.saga_when("slow-1", "the car step to be retried", |saga| {
        step(saga, "ReserveCarRental").is_some_and(|s| s["attempts"].as_i64() >= Some(2))
    })
    .await;
    env.cluster.serve_held(Participant::Cars).await.unwrap();
    let answer = env.get("/trip?tripID=slow-1&wait=30").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "succeeded");
    let car = step(&answer.body, "ReserveCarRental").unwrap();
    assert_eq!(car["status"], "succeeded");
    assert!(car["attempts"].as_i64() >= Some(2));
    env.finish_clean().await;
}

#[tokio::test]
async fn a_saga_past_its_deadline_compensates_instead_of_hanging() {
    let env = Env::start_with(&[Participant::Payments], |config| {
        config.retry.step_max_attempts = 1_000;
    })
    .await;
    let answer = env
        .post(
            "/trips?wait=0",
            &serde_json::json!({ "trip_id": "late-2", "deadline_secs": 1 }),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["input"]["deadline_secs"], 1);
    let saga = env
        .saga_when("late-2", "the deadline to stop the payment", |saga| {
            saga["status"] == "compensating"
        })
        .await;
    let payment = step(&saga, "ProcessPayment").unwrap();
    assert_eq!(payment["status"], "failed");
    assert_eq!(payment["last_error"]["error"], "deadline");
    env.finish().await;
}
