//! A participant's answer the orchestrator cannot use (one PostgreSQL
//! cannot store, one too large, one that is no JSON object or lacks a
//! field a later step reads, a redirect)
//! fails that attempt, is recorded in a form that can be stored, with why,
//! and the saga goes on by its retry policy to its end: no write that fails
//! for ever, no saga claimed again and again.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

use crate::definitions::sagas_dir;
use crate::support::Env;

const POISON: &str = r#"
name: poison
version: 1
participants: [shop]
input: {type: object}
steps:
  - name: Order
    call: {participant: shop, path: "/orders/{{ saga.id }}"}
    compensation: {name: CancelOrder, participant: shop, path: "/orders/{{ saga.id }}/cancel"}
  - name: Ship
    call: {participant: shop, path: "/ship", body: {order: "{{ steps.Order.order_id }}"}}
"#;

/// The calls the shop was sent, as `(path)`.
type Calls = Arc<Mutex<Vec<String>>>;

/// Answers each order as its saga's id says: `nul-*` a 2xx holding a NUL,
/// `big-*` a 2xx of 2 MiB with no length said, `long-*` one that says its
/// length, `text-*` a 2xx that is no JSON, `list-*` a JSON array,
/// `redirect-*` a 307, `raw-*` a 500 whose text holds raw NUL bytes,
/// `partial-*` a 2xx without the `order_id` that Ship reads.
async fn order(State(calls): State<Calls>, Path(id): Path<String>) -> Response {
    calls.lock().unwrap().push(format!("/orders/{id}"));
    let kind = id.split('-').next().unwrap_or_default();
    match kind {
        "nul" => axum::Json(json!({ "order_id": "o\u{0}1", "note": "fine" })).into_response(),
        "big" => {
            let chunks = (0..32).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
            let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        "long" => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"order_id\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)),
        )
            .into_response(),
        "text" => "order taken".into_response(),
        "list" => axum::Json(json!([1, 2])).into_response(),
        "redirect" => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, "http://elsewhere.invalid/orders")],
        )
            .into_response(),
        "raw" => (StatusCode::INTERNAL_SERVER_ERROR, "broken\0answer\0").into_response(),
        "partial" => axum::Json(json!({ "note": "taken" })).into_response(),
        _ => axum::Json(json!({ "order_id": format!("o-{id}") })).into_response(),
    }
}

async fn cancel(State(calls): State<Calls>, Path(id): Path<String>) -> axum::Json<Value> {
    calls.lock().unwrap().push(format!("/orders/{id}/cancel"));
    axum::Json(json!({ "cancelled": true }))
}

async fn ship(State(calls): State<Calls>) -> axum::Json<Value> {
    calls.lock().unwrap().push("/ship".into());
    axum::Json(json!({ "shipped": true }))
}

#[tokio::test]
async fn each_poison_answer_fails_its_attempts_and_the_saga_compensates_to_its_end() {
    let calls = Calls::default();
    let shop = testkit::TestServer::start(
        Router::new()
            .route("/orders/{id}", post(order))
            .route("/orders/{id}/cancel", post(cancel))
            .route("/ship", post(ship))
            .with_state(calls.clone()),
    )
    .await;
    let dir = sagas_dir(&[("poison.yaml", POISON)]);
    let url = shop.url.clone();
    let env = Env::start_with(&[], move |config| {
        config.participants.push(format!("shop={url}"));
        config.sagas_dir = dir;
        config.retry.step_max_attempts = 2;
        config.retry.retry_initial_delay_ms = 1;
        config.retry.retry_jitter = false;
    })
    .await;

    for (id, error) in [
        ("nul-1", "unstorable answer"),
        ("big-1", "answer too large"),
        ("long-1", "answer too large"),
        ("text-1", "unreadable answer"),
        ("list-1", "unreadable answer"),
        ("redirect-1", "redirect refused"),
        ("raw-1", ""),
        ("partial-1", "incomplete answer"),
    ] {
        let answer = env
            .post("/sagas/poison?wait=20", &json!({ "id": id }))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{id}: {}", answer.body);
        assert_eq!(answer.body["status"], "failed", "{id}: {}", answer.body);
        let rows: Vec<(String, String, i32, Value)> = sqlx::query_as(
            "SELECT step, status::text, attempt, detail FROM orchestrator.saga_log
             WHERE saga_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(env.db.pool())
        .await
        .unwrap();
        let steps: Vec<(&str, &str)> = rows
            .iter()
            .map(|(step, status, ..)| (step.as_str(), status.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                ("Order", "started"),
                ("Order", "retrying"),
                ("Order", "failed"),
                ("CancelOrder", "started"),
                ("CancelOrder", "succeeded"),
            ],
            "{id}: both attempts failed, then the order was undone: {rows:?}"
        );
        let failed = &rows[2].3;
        // A 5xx keeps its own status as the reason; the others say theirs.
        let reason = if error.is_empty() {
            Value::Null
        } else {
            json!(error)
        };
        assert_eq!(failed["error"], reason, "{id}: {failed}");
        let stored = failed.to_string();
        assert!(
            stored.len() < 8 * 1024,
            "{id}: recorded small: {} bytes",
            stored.len()
        );
        if id.starts_with("nul") || id.starts_with("raw") {
            assert!(
                stored.contains("\\\\u0000"),
                "{id}: the NUL kept, escaped: {stored}"
            );
        }
        if id.starts_with("redirect") {
            assert!(stored.contains("PARTICIPANT_SHOP_URL"), "{stored}");
        }
        if id.starts_with("partial") {
            assert!(stored.contains("steps.Order.order_id"), "{stored}");
        }
        assert_eq!(
            calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.contains(id))
                .count(),
            3,
            "{id}: two attempts, one cancel, nothing more"
        );
    }
    assert!(!calls.lock().unwrap().contains(&"/ship".to_owned()));
    // Nothing left to claim again.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM orchestrator.sagas WHERE status IN ('running', 'compensating')"
        )
        .await,
        0
    );
    env.finish().await;
}
