//! Any saga as a document, end to end: a second definition, unlike travel
//! (two participants of its own, a step with no compensation, a business
//! failure override, a body built from an earlier answer, a mixed-text
//! template, a per-step timeout), against small test participants over real
//! HTTP; definitions registered, read, validated and dry-run through the
//! API; versions pinned through a crash.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as Status};
use axum::routing::{post, put};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::support::{Env, pairs, step, steps};

const SHOP_V1: &str = r#"
name: shop
version: 1
participants: [store, bank]
input:
  type: object
  properties:
    item: {type: string, minLength: 1, default: book}
    amount: {type: integer, minimum: 1, default: 20}
    fail: {enum: [none, charge, conflict-once, ship, slow, hold], default: none}
steps:
  - name: PlaceOrder
    call:
      participant: store
      path: /orders
      body: {item: "{{ input.item }}", note: "order for {{ saga.id }}: {{ input.item }}"}
    compensation: {name: CancelOrder, participant: store, path: "/orders/{{ saga.id }}/cancel"}
  - name: Charge
    call:
      participant: bank
      path: /charges
      body: {order_id: "{{ steps.PlaceOrder.order_id }}", cents: "{{ input.amount * 100 }}", fail: "{{ input.fail }}"}
    # A 409 from the bank is worth a retry; only a decline is final.
    business_failure: [402]
    retry: {max_attempts: 3}
    compensation: {name: Refund, participant: bank, path: "/charges/{{ saga.id }}/refund"}
  - name: Ship
    call:
      participant: store
      method: PUT
      path: "/orders/{{ saga.id }}/ship"
      body: {charge: "{{ steps.Charge.charge_id }}", fail: "{{ input.fail }}"}
    timeout: 300ms
"#;

/// Version 2: ships through another path.
fn shop_v2() -> String {
    SHOP_V1
        .replace("version: 1", "version: 2")
        .replace("/ship\"", "/dispatch\"")
}

/// One call a test participant received.
#[derive(Debug, Clone)]
struct Call {
    participant: &'static str,
    method: String,
    path: String,
    key: String,
    body: Value,
}

/// The test participants' shared state: every call, in order, and the
/// calls held back until released.
#[derive(Clone)]
struct Shop {
    calls: Arc<Mutex<Vec<Call>>>,
    conflicted: Arc<Mutex<HashMap<String, bool>>>,
    held: Arc<Semaphore>,
}

#[derive(Clone)]
struct Served {
    shop: Shop,
    participant: &'static str,
}

impl Default for Shop {
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            conflicted: Arc::default(),
            held: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Shop {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_to(&self, path_part: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.contains(path_part))
            .collect()
    }

    fn release(&self) {
        self.held.add_permits(1_000);
    }
}

fn record(served: &Served, method: &str, path: String, headers: &HeaderMap, body: &Value) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    served.shop.calls.lock().unwrap().push(Call {
        participant: served.participant,
        method: method.to_owned(),
        path,
        key,
        body: body.clone(),
    });
}

fn saga_of(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|k| k.split(':').next())
        .unwrap_or_default()
        .to_owned()
}

/// `store` and `bank`: one router, served twice.
fn participant(shop: Shop, participant: &'static str) -> Router {
    async fn order(
        State(s): State<Served>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> (Status, axum::Json<Value>) {
        record(&s, "POST", "/orders".into(), &headers, &body);
        let id = saga_of(&headers);
        (
            Status::OK,
            axum::Json(json!({ "order_id": format!("o-{id}") })),
        )
    }
    async fn undo(
        State(s): State<Served>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Option<axum::Json<Value>>,
    ) -> axum::Json<Value> {
        let body = body.map(|b| b.0).unwrap_or(Value::Null);
        let what = if s.participant == "store" {
            format!("/orders/{id}/cancel")
        } else {
            format!("/charges/{id}/refund")
        };
        record(&s, "POST", what, &headers, &body);
        axum::Json(json!({ "undone": id }))
    }
    async fn charge(
        State(s): State<Served>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> (Status, axum::Json<Value>) {
        record(&s, "POST", "/charges".into(), &headers, &body);
        let id = saga_of(&headers);
        match body["fail"].as_str() {
            Some("charge") => {
                return (
                    Status::PAYMENT_REQUIRED,
                    axum::Json(json!({"error": "declined"})),
                );
            }
            Some("conflict-once") => {
                let first = s
                    .shop
                    .conflicted
                    .lock()
                    .unwrap()
                    .insert(id.clone(), true)
                    .is_none();
                if first {
                    return (Status::CONFLICT, axum::Json(json!({"error": "busy"})));
                }
            }
            Some("hold") => {
                if let Ok(permit) = s.shop.held.acquire().await {
                    permit.forget();
                }
            }
            _ => {}
        }
        (
            Status::OK,
            axum::Json(json!({ "charge_id": format!("c-{id}"), "cents": body["cents"] })),
        )
    }
    async fn ship(
        State(s): State<Served>,
        Path((id, how)): Path<(String, String)>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> (Status, axum::Json<Value>) {
        record(&s, "PUT", format!("/orders/{id}/{how}"), &headers, &body);
        match body["fail"].as_str() {
            Some("ship") => (
                Status::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "down"})),
            ),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                (Status::OK, axum::Json(json!({"shipped": true})))
            }
            _ => (Status::OK, axum::Json(json!({"shipped": true}))),
        }
    }
    Router::new()
        .route("/orders", post(order))
        .route("/orders/{id}/cancel", post(undo))
        .route("/orders/{id}/{how}", put(ship))
        .route("/charges", post(charge))
        .route("/charges/{id}/refund", post(undo))
        .with_state(Served { shop, participant })
}

/// A folder of definitions: travel's, and the documents given.
pub(crate) fn sagas_dir(documents: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagas-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("travel.yaml"),
        orchestrator::definition::TRAVEL_YAML,
    )
    .unwrap();
    for (file, text) in documents {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

/// A cluster whose orchestrator also knows the shop saga and its two
/// participants, with attempts long enough that only the step's own timeout
/// cuts one short.
struct ShopEnv {
    env: Env,
    shop: Shop,
    _store: testkit::TestServer,
    _bank: testkit::TestServer,
    urls: [String; 2],
}

impl ShopEnv {
    async fn start(id: Option<&str>, dir: PathBuf) -> Self {
        let shop = Shop::default();
        let store = testkit::TestServer::start(participant(shop.clone(), "store")).await;
        let bank = testkit::TestServer::start(participant(shop.clone(), "bank")).await;
        let urls = [store.url.clone(), bank.url.clone()];
        let configure = shop_config(urls.clone(), dir, id.map(str::to_owned));
        let env = Env::start_with(&[], configure).await;
        Self {
            env,
            shop,
            _store: store,
            _bank: bank,
            urls,
        }
    }

    async fn start_saga(&self, id: &str, input: Value, wait: u32) -> crate::support::Answer {
        self.env
            .post(
                &format!("/sagas/shop?wait={wait}"),
                &json!({ "id": id, "input": input }),
            )
            .await
    }
}

fn shop_config(
    [store, bank]: [String; 2],
    dir: PathBuf,
    id: Option<String>,
) -> impl FnOnce(&mut orchestrator::Config) {
    move |config| {
        config.participants.push(format!("store={store}"));
        config.participants.push(format!("bank={bank}"));
        config.sagas_dir = dir;
        config.retry.attempt_timeout_ms = 5_000;
        config.orchestrator_id = id;
    }
}

#[tokio::test]
async fn a_saga_of_its_own_runs_forward_and_compensates_as_its_document_says() {
    let s = ShopEnv::start(None, sagas_dir(&[("shop.yaml", SHOP_V1)])).await;

    // Forward: each body rendered from the input, the saga and the earlier
    // answers, typed where a string is one expression.
    let answer = s
        .start_saga("s-1", json!({ "item": "pen", "amount": 3 }), 10)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let saga = &answer.body;
    assert_eq!(
        (
            &saga["id"],
            &saga["definition"],
            &saga["definition_version"],
            &saga["status"]
        ),
        (
            &json!("s-1"),
            &json!("shop"),
            &json!(1),
            &json!("succeeded")
        )
    );
    assert_eq!(
        saga["input"],
        json!({"item": "pen", "amount": 3, "fail": "none"})
    );
    let calls = s.shop.calls();
    let seen: Vec<(&str, &str, &str, &str)> = calls
        .iter()
        .map(|c| {
            (
                c.participant,
                c.method.as_str(),
                c.path.as_str(),
                c.key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("store", "POST", "/orders", "s-1:PlaceOrder"),
            ("bank", "POST", "/charges", "s-1:Charge"),
            ("store", "PUT", "/orders/s-1/ship", "s-1:Ship"),
        ]
    );
    assert_eq!(
        calls[0].body,
        json!({"item": "pen", "note": "order for s-1: pen"})
    );
    assert_eq!(
        calls[1].body,
        json!({"order_id": "o-s-1", "cents": 300, "fail": "none"})
    );
    assert_eq!(calls[2].body, json!({"charge": "c-s-1", "fail": "none"}));
    assert_eq!(saga["outputs"]["Charge"]["charge_id"], "c-s-1");

    // A decline (402, listed) is final: the failed step's compensation, then
    // the earlier ones, newest first.
    let answer = s.start_saga("s-2", json!({ "fail": "charge" }), 10).await;
    assert_eq!(answer.body["status"], "failed", "{}", answer.body);
    assert_eq!(
        steps(&answer.body),
        pairs(&[
            ("PlaceOrder", "succeeded"),
            ("Charge", "failed"),
            ("Refund", "succeeded"),
            ("CancelOrder", "succeeded"),
        ])
    );
    assert_eq!(step(&answer.body, "Charge").unwrap()["attempts"], 1);
    assert_eq!(s.shop.calls_to("/charges/s-2/refund")[0].key, "s-2:Refund");

    // A 409 is not in the step's list: retried, then it succeeds.
    let answer = s
        .start_saga("s-3", json!({ "fail": "conflict-once" }), 10)
        .await;
    assert_eq!(answer.body["status"], "succeeded", "{}", answer.body);
    assert_eq!(step(&answer.body, "Charge").unwrap()["attempts"], 2);

    // The step with no compensation fails after its budget: only the earlier
    // steps are undone.
    let answer = s.start_saga("s-4", json!({ "fail": "ship" }), 10).await;
    assert_eq!(
        steps(&answer.body),
        pairs(&[
            ("PlaceOrder", "succeeded"),
            ("Charge", "succeeded"),
            ("Ship", "failed"),
            ("Refund", "succeeded"),
            ("CancelOrder", "succeeded"),
        ])
    );
    assert_eq!(
        step(&answer.body, "Ship").unwrap()["attempts"],
        3,
        "STEP_MAX_ATTEMPTS"
    );

    // The step's own timeout (300 ms) cuts each attempt, not the 5 s default.
    let answer = s.start_saga("s-5", json!({ "fail": "slow" }), 10).await;
    assert_eq!(answer.body["status"], "failed", "{}", answer.body);
    let ship = step(&answer.body, "Ship").unwrap();
    assert_eq!(ship["last_error"]["error"], "timeout", "{ship}");
    assert_eq!(ship["attempts"], 3);

    // The log, as psql shows it, names the steps of this definition.
    assert_eq!(
        s.env.log("s-2").await,
        pairs(&[
            ("PlaceOrder", "started"),
            ("PlaceOrder", "succeeded"),
            ("Charge", "started"),
            ("Charge", "failed"),
            ("Refund", "started"),
            ("Refund", "succeeded"),
            ("CancelOrder", "started"),
            ("CancelOrder", "succeeded"),
        ])
    );
    s.env.finish().await;
}

#[tokio::test]
async fn sagas_of_any_definition_are_started_read_listed_and_refused_clearly() {
    let s = ShopEnv::start(None, sagas_dir(&[("shop.yaml", SHOP_V1)])).await;
    let env = &s.env;

    let bad = s
        .start_saga("b-1", json!({ "amount": 0, "colour": "red" }), 0)
        .await;
    assert_eq!(
        (bad.status, bad.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input")),
        "{}",
        bad.body
    );
    let message = bad.body["message"].as_str().unwrap();
    assert!(message.contains("input.amount"), "{message}");
    let unknown = env.post("/sagas/nope", &json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert!(
        unknown.body["message"]
            .as_str()
            .unwrap()
            .contains("PUT /definitions/nope")
    );
    let bad_id = s.start_saga("no/slash", json!({}), 0).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST, "{}", bad_id.body);
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        0
    );

    // The same id and input joins the saga; other input is a 409 naming it.
    let first = s.start_saga("j-1", json!({ "item": "cup" }), 10).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = s.start_saga("j-1", json!({ "item": "cup" }), 10).await;
    assert_eq!(
        (again.status, &again.body["id"]),
        (StatusCode::OK, &json!("j-1"))
    );
    let other = s.start_saga("j-1", json!({ "item": "mug" }), 10).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);
    assert!(
        other.body["message"].as_str().unwrap().contains("item"),
        "{}",
        other.body
    );
    let orders = s
        .shop
        .calls()
        .into_iter()
        .filter(|c| c.path == "/orders")
        .count();
    assert_eq!(orders, 1, "one saga, one order");

    // An id a travel saga has is not another definition's.
    let trip = env.get("/trip?tripID=t-1").await;
    assert_eq!(trip.body["status"], "succeeded", "{}", trip.body);
    let taken = s.start_saga("t-1", json!({}), 0).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.body);
    assert!(
        taken.body["message"].as_str().unwrap().contains("travel"),
        "{}",
        taken.body
    );

    // Reading and listing, by definition.
    let read = env.get("/sagas/shop/j-1").await;
    assert_eq!(
        (read.status, &read.body["status"]),
        (StatusCode::OK, &json!("succeeded"))
    );
    assert_eq!(
        env.get("/sagas/travel/j-1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(env.get("/trips/j-1").await.status, StatusCode::NOT_FOUND);
    let listed = env.get("/sagas?definition=shop").await;
    let ids: Vec<&Value> = listed.body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&json!("j-1")]);
    let all = env.get("/sagas").await;
    assert_eq!(all.body["sagas"].as_array().unwrap().len(), 2);
    let trips = env.get("/trips").await;
    assert_eq!(
        trips.body["sagas"].as_array().unwrap().len(),
        1,
        "{}",
        trips.body
    );
    assert_eq!(trips.body["sagas"][0]["trip_id"], "t-1");
    s.env.finish().await;
}

#[tokio::test]
async fn definitions_are_registered_once_per_version_and_read_back() {
    let s = ShopEnv::start(None, sagas_dir(&[])).await;
    let env = &s.env;
    let put = |body: String, content_type: &'static str| {
        env.send(Method::PUT, "/definitions/shop", content_type, body)
    };

    let created = put(SHOP_V1.to_owned(), "application/yaml").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["created"], true);
    let digest = created.body["digest"].as_str().unwrap().to_owned();
    // The same content, even as JSON, is a no-op.
    let doc = env.get("/definitions/shop/1").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["steps"][2]["timeout"], "300ms");
    let same = put(doc.body.to_string(), "application/json").await;
    assert_eq!(
        (same.status, &same.body["created"], &same.body["digest"]),
        (StatusCode::OK, &json!(false), &json!(digest))
    );
    // The same version with other content is refused, naming both digests.
    let changed = put(
        SHOP_V1.replace("default: book", "default: lamp"),
        "application/yaml",
    )
    .await;
    assert_eq!(changed.status, StatusCode::CONFLICT, "{}", changed.body);
    let message = changed.body["message"].as_str().unwrap();
    assert!(
        message.contains(&digest) && message.matches("sha256:").count() == 2,
        "{message}"
    );
    assert_eq!(
        put(shop_v2(), "text/yaml").await.status,
        StatusCode::CREATED
    );

    let list = env.get("/definitions").await;
    let shop = list.body["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "shop")
        .cloned()
        .unwrap();
    assert_eq!(
        (&shop["latest"], &shop["versions"]),
        (&json!(2), &json!([1, 2]))
    );
    let versions = env.get("/definitions/shop").await;
    assert_eq!(versions.body["versions"][0]["digest"], json!(digest));
    assert_eq!(
        env.get("/definitions/shop/9").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.get("/definitions/none").await.status,
        StatusCode::NOT_FOUND
    );

    // New sagas take the newest version unless asked.
    let newest = s.start_saga("v-2", json!({}), 10).await;
    assert_eq!(newest.body["definition_version"], 2, "{}", newest.body);
    assert_eq!(s.shop.calls_to("/orders/v-2/dispatch").len(), 1);
    let pinned = env
        .post("/sagas/shop?version=1&wait=10", &json!({ "id": "v-1" }))
        .await;
    assert_eq!(pinned.body["definition_version"], 1, "{}", pinned.body);
    assert_eq!(s.shop.calls_to("/orders/v-1/ship").len(), 1);

    // Refused before anything is stored: syntax, shape, checks, the URL.
    let garbage = put("name: [".into(), "application/yaml").await;
    assert_eq!(
        (garbage.status, garbage.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_definition")),
        "{}",
        garbage.body
    );
    let misnamed = put(
        SHOP_V1.replace("name: shop", "name: other"),
        "application/yaml",
    )
    .await;
    assert_eq!(
        misnamed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        misnamed.body
    );
    let invalid = put(
        shop_v2()
            .replace("version: 2", "version: 3")
            .replace("steps.Charge.charge_id", "steps.Ship.id"),
        "application/yaml",
    )
    .await;
    assert_eq!(
        invalid.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        invalid.body
    );
    assert_eq!(invalid.body["diagnostics"][0]["code"], "later_step");
    assert_eq!(
        invalid.body["diagnostics"][0]["path"],
        "steps[2].call.body.charge"
    );
    let no_url = put(
        SHOP_V1
            .replace("version: 1", "version: 4")
            .replace("[store, bank]", "[store, bank, mail]")
            .replace(
                "participant: bank\n      path: /charges",
                "participant: mail\n      path: /charges",
            ),
        "application/yaml",
    )
    .await;
    assert_eq!(
        no_url.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        no_url.body
    );
    let message = no_url.body["diagnostics"][0]["message"].as_str().unwrap();
    assert!(message.contains("PARTICIPANT_MAIL_URL"), "{message}");
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.definitions WHERE name = 'shop'")
            .await,
        2
    );

    // Validate answers the diagnostics without registering anything.
    let check = env
        .send(
            Method::POST,
            "/definitions/validate",
            "application/yaml",
            SHOP_V1.replace("{{ input.item }}\"}", "{{ input.colour }}\"}"),
        )
        .await;
    assert_eq!(check.status, StatusCode::OK);
    assert_eq!(check.body["valid"], false, "{}", check.body);
    assert_eq!(check.body["diagnostics"][0]["code"], "undeclared_input");
    let fine = env
        .send(
            Method::POST,
            "/definitions/validate",
            "application/yaml",
            orchestrator::definition::TRAVEL_YAML.to_owned(),
        )
        .await;
    assert_eq!(
        (&fine.body["valid"], &fine.body["diagnostics"]),
        (&json!(true), &json!([]))
    );
    // With the steps a dry run's outcomes name.
    assert_eq!(
        fine.body["steps"][2],
        json!({ "name": "ProcessPayment", "compensation": "RefundPayment" })
    );
    assert_eq!(fine.body["steps"].as_array().unwrap().len(), 5);
    assert_eq!(check.body["steps"], json!([]));
    // An empty body is no document to check: refused, saying so.
    let empty = env
        .send(
            Method::POST,
            "/definitions/validate",
            "application/yaml",
            "\n".to_owned(),
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);
    assert_eq!(empty.body["error"], "malformed_definition");
    // Names the API's routes take are refused.
    for name in ["counts", "dry-run"] {
        let taken = env
            .send(
                Method::POST,
                "/definitions/validate",
                "application/yaml",
                SHOP_V1.replace("name: shop", &format!("name: {name}")),
            )
            .await;
        assert_eq!(
            taken.body["diagnostics"][0]["code"], "invalid_name",
            "{}",
            taken.body
        );
    }

    // The document's JSON Schema, as published in the repository.
    let schema = env.get("/definitions/schema").await;
    assert_eq!(schema.status, StatusCode::OK);
    assert_eq!(
        schema.body,
        orchestrator::definition::document::json_schema()
    );
    assert_eq!(schema.body["title"], "Saga definition");
    s.env.finish().await;
}

#[tokio::test]
async fn the_six_travel_flows_dry_run_with_no_call_and_no_write() {
    let env = Env::start().await;
    for (run_type, failing, expected) in [
        (
            "success",
            None,
            &[
                "ReserveFlight",
                "ReserveCarRental",
                "ProcessPayment",
                "ConfirmFlight",
                "ConfirmCarRental",
            ][..],
        ),
        (
            "failFlightsReservation",
            Some("ReserveFlight"),
            &["ReserveFlight", "CancelFlightReservation"][..],
        ),
        (
            "failCarRentalReservation",
            Some("ReserveCarRental"),
            &[
                "ReserveFlight",
                "ReserveCarRental",
                "CancelRentalReservation",
                "CancelFlightReservation",
            ][..],
        ),
        (
            "failPayment",
            Some("ProcessPayment"),
            &[
                "ReserveFlight",
                "ReserveCarRental",
                "ProcessPayment",
                "RefundPayment",
                "CancelRentalReservation",
                "CancelFlightReservation",
            ][..],
        ),
        (
            "failFlightsConfirmation",
            Some("ConfirmFlight"),
            &[
                "ReserveFlight",
                "ReserveCarRental",
                "ProcessPayment",
                "ConfirmFlight",
                "RefundPayment",
                "CancelRentalReservation",
                "CancelFlightReservation",
            ][..],
        ),
        (
            "failCarRentalConfirmation",
            Some("ConfirmCarRental"),
            &[
                "ReserveFlight",
                "ReserveCarRental",
                "ProcessPayment",
                "ConfirmFlight",
                "ConfirmCarRental",
                "RefundPayment",
                "CancelRentalReservation",
                "CancelFlightReservation",
            ][..],
        ),
    ] {
        let mut outcomes = serde_json::Map::new();
        if let Some(step) = failing {
            outcomes.insert(
                step.into(),
                json!({ "status": 422, "body": {"error": "injected_failure"} }),
            );
        }
        let body =
            json!({ "id": "dry-1", "input": { "run_type": run_type }, "outcomes": outcomes });
        let answer = env.post("/definitions/travel/dry-run", &body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let calls: Vec<&str> = answer.body["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["step"].as_str().unwrap())
            .collect();
        assert_eq!(calls, expected, "{run_type}");
        let status = if failing.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(answer.body["status"], status, "{run_type}");
        let first = &answer.body["calls"][0];
        assert_eq!(
            first["url"],
            format!("{}/reservations", env.cluster.flights_url)
        );
        assert_eq!(first["idempotency_key"], "dry-1:ReserveFlight");
        assert_eq!(first["body"]["run_type"], run_type);

        // The same document, not registered: the same calls.
        let mut unregistered = body.clone();
        unregistered["document"] = json!(orchestrator::definition::TRAVEL_YAML);
        let same = env.post("/definitions/dry-run", &unregistered).await;
        assert_eq!(
            (same.status, &same.body),
            (StatusCode::OK, &answer.body),
            "{run_type}"
        );
    }

    // A document given as a JSON object, and one with a step of its own.
    let travel = orchestrator::definition::Document::parse(
        orchestrator::definition::TRAVEL_YAML,
        orchestrator::definition::Format::Yaml,
    )
    .unwrap();
    let mut document = travel.to_json();
    document["steps"][4]["name"] = json!("ConfirmRental");
    let own = env
        .post(
            "/definitions/dry-run",
            &json!({ "document": document, "outcomes": { "ConfirmRental": { "status": 422 } } }),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let steps: Vec<&Value> = own.body["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["step"])
        .collect();
    assert_eq!(
        steps[4..],
        [
            "ConfirmRental",
            "RefundPayment",
            "CancelRentalReservation",
            "CancelFlightReservation"
        ]
    );
    assert_eq!(own.body["status"], "failed");
    // Not a document, a document with errors, a field too many.
    let broken =
        orchestrator::definition::TRAVEL_YAML.replace("participant: cars", "participant: nobody");
    for (body, status, says) in [
        (
            json!({ "document": "steps: [" }),
            StatusCode::BAD_REQUEST,
            "not a saga definition",
        ),
        (
            json!({ "document": 7 }),
            StatusCode::BAD_REQUEST,
            "not a saga definition",
        ),
        (
            json!({ "document": broken }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_participant",
        ),
        (
            json!({ "document": orchestrator::definition::TRAVEL_YAML, "outcome": {} }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "outcome",
        ),
        (
            json!({ "document": orchestrator::definition::TRAVEL_YAML, "input": { "run_type": "fly" } }),
            StatusCode::BAD_REQUEST,
            "run_type",
        ),
    ] {
        let answer = env.post("/definitions/dry-run", &body).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        assert!(
            answer.body.to_string().contains(says),
            "{body}: {}",
            answer.body
        );
    }
    let unknown = env
        .post(
            "/definitions/travel/dry-run",
            &json!({ "outcomes": { "Nope": { "status": 500 } } }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM flights.reservations").await,
        0
    );
    env.finish().await;
}

#[tokio::test]
async fn sagas_in_flight_finish_on_their_version_through_a_crash_and_a_new_folder() {
    let dir = sagas_dir(&[("shop.yaml", SHOP_V1)]);
    let mut s = ShopEnv::start(Some("a"), dir).await;
    let ids = ["p-1", "p-2", "p-3"];
    for id in ids {
        let answer = s.start_saga(id, json!({ "fail": "hold" }), 0).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    testkit::eventually("three charges held", Duration::from_secs(10), || async {
        (s.shop.calls_to("/charges").len() == 3).then_some(())
    })
    .await;
    // Version 2 registered while version 1 runs, then a kill -9.
    let v2 = s
        .env
        .send(
            Method::PUT,
            "/definitions/shop",
            "application/yaml",
            shop_v2(),
        )
        .await;
    assert_eq!(v2.status, StatusCode::CREATED, "{}", v2.body);
    s.env
        .cluster
        .crash_orchestrator(&s.env.cluster.orchestrator_url);

    // Restarted with the same identity and only version 2 in its folder.
    let dir = sagas_dir(&[("shop.yaml", &shop_v2())]);
    let b = s
        .env
        .spawn_orchestrator(shop_config(s.urls.clone(), dir, Some("a".into())))
        .await;
    testkit::eventually(
        "the charges sent again",
        Duration::from_secs(10),
        || async { (s.shop.calls_to("/charges").len() == 6).then_some(()) },
    )
    .await;
    s.shop.release();
    for id in ids {
        let saga = testkit::eventually("the saga to end", Duration::from_secs(10), || async {
            let answer = s.env.get_at(&b, &format!("/sagas/shop/{id}")).await;
            (answer.body["status"] == "succeeded").then_some(answer.body)
        })
        .await;
        assert_eq!(saga["definition_version"], 1, "{saga}");
        assert_eq!(
            step(&saga, "Charge").unwrap()["last_error"]["error"],
            "interrupted"
        );
        let charges = s.shop.calls_to("/charges");
        let keys: Vec<&str> = charges
            .iter()
            .filter(|c| c.key.starts_with(id))
            .map(|c| c.key.as_str())
            .collect();
        let key = format!("{id}:Charge");
        assert_eq!(keys, [key.as_str(); 2], "resent with the same key");
        assert_eq!(s.shop.calls_to(&format!("/orders/{id}/ship")).len(), 1);
        assert!(
            s.shop
                .calls_to(&format!("/orders/{id}/dispatch"))
                .is_empty()
        );
    }
    // A new saga on the restarted process takes version 2.
    let answer = s.env.get_at(&b, "/definitions/shop").await;
    assert_eq!(answer.body["versions"].as_array().unwrap().len(), 2);
    let new = reqwest::Client::new()
        .post(format!("{b}/sagas/shop?wait=10"))
        .json(&json!({ "id": "p-4" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        (&new["definition_version"], &new["status"]),
        (&json!(2), &json!("succeeded")),
        "{new}"
    );
    s.env.finish().await;
}

/// The native runner with a saga of the user's own: `SAGAS_DIR` and the
/// participants' URLs (a flag and a variable), then the saga started and
/// compensated over real HTTP.
#[tokio::test]
async fn the_native_runner_runs_a_saga_of_your_own() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let db = testkit::TestDb::new().await;
    let shop = Shop::default();
    let store = testkit::TestServer::start(participant(shop.clone(), "store")).await;
    let bank = testkit::TestServer::start(participant(shop.clone(), "bank")).await;
    let dir = sagas_dir(&[("shop.yaml", SHOP_V1)]);
    let mut runner = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args(["--port", "0", "--participant"])
        .arg(format!("store={}", store.url))
        .env("PARTICIPANT_BANK_URL", &bank.url)
        .env("SAGAS_DIR", &dir)
        .env("DATABASE_URL", db.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the runner");
    let mut lines = BufReader::new(runner.stdout.take().unwrap()).lines();
    let orchestrator = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("orchestrator") {
                return url.trim().to_owned();
            }
        }
        panic!("the runner ended without printing its URLs")
    })
    .await
    .expect("the runner is up within a minute");

    let answer = reqwest::Client::new()
        .post(format!("{orchestrator}/sagas/shop?wait=10"))
        .json(&json!({"id": "mine-1", "input": {"fail": "charge"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let saga: Value = answer.json().await.unwrap();
    assert_eq!(saga["status"], "failed", "{saga}");
    assert_eq!(
        steps(&saga),
        pairs(&[
            ("PlaceOrder", "succeeded"),
            ("Charge", "failed"),
            ("Refund", "succeeded"),
            ("CancelOrder", "succeeded"),
        ])
    );
    let undone: Vec<String> = shop
        .calls_to("/cancel")
        .into_iter()
        .chain(shop.calls_to("/refund"))
        .map(|c| c.key)
        .collect();
    assert_eq!(undone, ["mine-1:CancelOrder", "mine-1:Refund"]);
    runner.kill().await.unwrap();
}
