//! `GET /sagas/{definition}/{id}/events`: a saga's changes as server-sent
//! events, from the saga as it stands to its end, then the stream closes;
//! `GET /sagas/counts/events`: the counts as they change.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::held_trip;

/// Reads `response` until it closes: the data of each `saga` event.
async fn read_events(mut response: reqwest::Response, until_closed: Duration) -> Vec<Value> {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.expect("read the stream") {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    tokio::time::timeout(until_closed, read)
        .await
        .expect("the stream closes once the saga has ended");
    text.split("\n\n")
        .filter(|event| event.lines().any(|line| line == "event: saga"))
        .map(|event| {
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .expect("data");
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

fn step<'a>(saga: &'a Value, name: &str) -> Option<&'a Value> {
    saga["steps"].as_array()?.iter().find(|s| s["step"] == name)
}

#[tokio::test]
async fn a_saga_is_streamed_from_where_it_stands_to_its_end() {
    let (env, proxies) = held_trip(
        "tripID=ev-1&runType=failPayment",
        |p| &p.payments,
        "/payments",
    )
    .await;

    let url = format!("{}/sagas/travel/ev-1/events", env.cluster.orchestrator_url);
    let mut response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // The first event comes at once: the saga waiting on its payment.
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event at once")
        .unwrap()
        .unwrap();
    let first = std::str::from_utf8(&first).unwrap();
    assert!(first.starts_with("event: saga\n"), "{first}");
    let first: Value = serde_json::from_str(
        first
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["status"], "running");
    assert_eq!(step(&first, "ProcessPayment").unwrap()["status"], "running");

    proxies.payments.release();
    let rest = read_events(response, Duration::from_secs(20)).await;
    let last = rest.last().expect("the saga's moves");
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(
        step(last, "CancelFlightReservation").unwrap()["status"],
        "succeeded"
    );
    assert_eq!(
        *last,
        env.get("/sagas/travel/ev-1").await.body,
        "as the API answers"
    );

    // An ended saga: one event, and the stream closes.
    let again = read_events(reqwest::get(&url).await.unwrap(), Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["status"], "failed");

    for (path, status) in [
        ("/sagas/travel/nobody/events", StatusCode::NOT_FOUND),
        ("/sagas/shop/ev-1/events", StatusCode::NOT_FOUND),
        ("/sagas/travel/a%20b/events", StatusCode::BAD_REQUEST),
    ] {
        let answer = env.get(path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(answer.body["error"].is_string(), "{path}: {}", answer.body);
    }
    env.finish_clean().await;
}

/// Reads `response`'s events named `name` as they come, until one of them
/// satisfies `done`: that one.
async fn event_when(
    response: &mut reqwest::Response,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut text = String::new();
    let read = async {
        loop {
            let chunk = response.chunk().await.expect("read the stream");
            text.push_str(std::str::from_utf8(&chunk.expect("the stream stays open")).unwrap());
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if !event.lines().any(|line| line == format!("event: {name}")) {
                    continue;
                }
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                let value: Value = serde_json::from_str(data).unwrap();
                if done(&value) {
                    return value;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no event: {what}"))
}

#[tokio::test]
async fn the_counts_are_streamed_as_sagas_start_and_end() {
    let (env, proxies) = held_trip(
        "tripID=count-1&runType=failPayment",
        |p| &p.payments,
        "/payments",
    )
    .await;
    let counts = env.get("/sagas/counts").await;
    assert_eq!(counts.status, StatusCode::OK);
    assert_eq!(
        counts.body,
        serde_json::json!({ "running": 1, "compensating": 0, "stuck": 0, "succeeded": 0,
                            "failed": 0, "counted_up_to": 10_000, "newest": "count-1" })
    );
    let url = format!("{}/sagas/counts/events", env.cluster.orchestrator_url);
    let mut response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = event_when(&mut response, "counts", "the counts at once", |_| true).await;
    assert_eq!(first, counts.body);

    proxies.payments.release();
    let ended = event_when(&mut response, "counts", "the trip counted failed", |c| {
        c["failed"] == 1
    })
    .await;
    assert_eq!(
        (&ended["running"], &ended["compensating"]),
        (&0.into(), &0.into())
    );
    let second = env.get("/trip?tripID=count-2").await;
    assert_eq!(second.body["status"], "succeeded", "{}", second.body);
    let newest = event_when(&mut response, "counts", "the second trip counted", |c| {
        c["succeeded"] == 1
    })
    .await;
    assert_eq!(newest["newest"], "count-2");
    assert_eq!(newest, env.get("/sagas/counts").await.body);
    drop(response);

    // Another definition's counts: none of these.
    let other = env.get("/sagas/counts?definition=shop").await;
    assert_eq!(
        (
            &other.body["failed"],
            &other.body["succeeded"],
            &other.body["newest"]
        ),
        (&0.into(), &0.into(), &Value::Null)
    );
    env.finish_clean().await;
}
