//! Webhooks: a saga's end reaches every subscribed URL once answered 2xx,
//! signed as Standard Webhooks signs, retried until then, and not lost when
//! the orchestrator crashes between the saga's end and the delivery.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::support::Env;

/// What a receiver got: each request's headers and body.
#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Requests still to answer 503.
    refuse: AtomicUsize,
    /// While set, requests are received and never answered.
    hold: AtomicBool,
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox.got.lock().unwrap().push((headers, body));
    if inbox.hold.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let refuse = inbox
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if refuse.is_ok() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

/// A receiver on port 0 refusing its first `refuse` requests: its URL.
async fn receiver(refuse: usize) -> (String, Arc<Inbox>) {
    let inbox = Arc::new(Inbox::default());
    inbox.refuse.store(refuse, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&inbox));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, inbox)
}

/// Verifies a request as a Standard Webhooks library does, written here
/// from the specification: HMAC-SHA256 of `id.timestamp.body` under the
/// secret's base64 key.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) {
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert!(
        header("webhook-signature")
            .split(' ')
            .any(|sig| sig == expected),
        "signature {} is not {expected}",
        header("webhook-signature")
    );
    let sent: i64 = timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 60);
}

async fn await_deliveries(inbox: &Inbox, n: usize) -> Vec<(HeaderMap, Bytes)> {
    testkit::eventually("the webhooks", Duration::from_secs(20), || async {
        let got = inbox.got.lock().unwrap();
        (got.len() >= n).then(|| got.clone())
    })
    .await
}

#[tokio::test]
async fn a_failed_trip_is_sent_signed_to_its_subscribers() {
    let env = Env::start_with(&[], |c| c.webhooks.webhook_poll_ms = 20).await;
    let (url, inbox) = receiver(0).await;
    let (other_url, other) = receiver(0).await;
    let subscribed = env.post("/webhooks", &json!({ "url": url })).await;
    assert_eq!(subscribed.status, 201, "{}", subscribed.body);
    let secret = subscribed.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // Another subscriber wants only successes.
    let only = json!({ "url": other_url, "event_types": ["saga.succeeded"] });
    assert_eq!(env.post("/webhooks", &only).await.status, 201);
    let listed = env.get("/webhooks").await;
    assert_eq!(listed.body["webhooks"].as_array().unwrap().len(), 2);
    assert!(
        !listed.body.to_string().contains(&secret),
        "the secret is shown once"
    );

    let trip = env.get("/trip?tripID=trip-4&runType=failPayment").await;
    assert_eq!(trip.body["status"], "failed", "{}", trip.body);
    let got = await_deliveries(&inbox, 1).await;
    let (headers, body) = &got[0];
    verify(&secret, headers, body);
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["type"], "saga.failed");
    assert_eq!(event["data"]["id"], "trip-4");
    assert_eq!(event["data"]["definition"], "travel");
    assert_eq!(event["data"]["failed_step"], "ProcessPayment");
    assert_eq!(
        event["data"]["message"],
        "Your trip trip-4 could not be booked: payment failed; flight and car cancelled",
        "the travel definition's message"
    );
    assert_eq!(event["data"]["steps"].as_array().unwrap().len(), 6);

    let deliveries = env.get("/sagas/travel/trip-4/webhooks").await;
    assert_eq!(deliveries.status, 200, "{}", deliveries.body);
    let deliveries = deliveries.body["deliveries"].as_array().unwrap().clone();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["status"], "delivered");
    assert_eq!(deliveries[0]["attempts"], 1);
    assert_eq!(deliveries[0]["id"], headers["webhook-id"].to_str().unwrap());

    // The success reaches both.
    let trip = env.get("/trip?tripID=trip-1").await;
    assert_eq!(trip.body["status"], "succeeded");
    let got = await_deliveries(&other, 1).await;
    let event: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(
        (&event["type"], &event["data"]["id"]),
        (&json!("saga.succeeded"), &json!("trip-1"))
    );
    assert_eq!(
        event["data"]["message"],
        "Your trip trip-1 is booked: flight from Detroit to Frankfurt, BMW rental, 750.00 USD paid"
    );
    await_deliveries(&inbox, 2).await;
    assert_eq!(other.got.lock().unwrap().len(), 1, "no failure sent to it");
    env.finish_clean().await;
}

#[tokio::test]
async fn a_refused_delivery_is_retried_with_the_same_id_until_answered() {
    let env = Env::start_with(&[], |c| {
        c.webhooks.webhook_poll_ms = 20;
        c.webhooks.webhook_retry_initial_ms = 50;
    })
    .await;
    let (url, inbox) = receiver(2).await;
    let subscribed = env.post("/webhooks", &json!({ "url": url })).await;
    let secret = subscribed.body["secret"].as_str().unwrap().to_owned();
    env.get("/trip?tripID=retried&runType=failFlightsReservation")
        .await;
    let got = await_deliveries(&inbox, 3).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    for (headers, body) in &got {
        verify(&secret, headers, body);
    }
    let deliveries =
        testkit::eventually("the delivery recorded", Duration::from_secs(5), || async {
            let answer = env.get("/sagas/travel/retried/webhooks").await;
            let delivery = answer.body["deliveries"][0].clone();
            (delivery["status"] == "delivered").then_some(delivery)
        })
        .await;
    assert_eq!(deliveries["attempts"], 3);
    assert_eq!(deliveries["last_status"], 204);
    env.finish_clean().await;
}

#[tokio::test]
async fn a_delivery_left_by_a_crash_is_sent_after_the_restart() {
    let dir = std::env::temp_dir().join(format!("webhook-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    // Refuses until the orchestrator has crashed.
    let (url, inbox) = receiver(usize::MAX).await;
    let configure = |c: &mut orchestrator::Config| {
        c.orchestrator_id = Some("a".into());
        c.webhooks.webhook_url = Some(url.clone());
        c.webhooks.webhook_secret_file = Some(secret_file.clone());
        c.webhooks.webhook_poll_ms = 20;
        c.webhooks.webhook_retry_initial_ms = 50;
        // A claim the crash leaves runs out within seconds.
        c.webhooks.webhook_timeout_ms = 1_000;
    };
    let mut env = Env::start_with(&[], configure).await;
    let trip = env.get("/trip?tripID=crashed&runType=failPayment").await;
    assert_eq!(trip.body["status"], "failed");
    await_deliveries(&inbox, 1).await;
    env.cluster
        .crash_orchestrator(&env.cluster.orchestrator_url);
    inbox.refuse.store(0, Ordering::SeqCst);

    let b = env.spawn_orchestrator(configure).await;
    let got = testkit::eventually(
        "the delivery after the restart",
        Duration::from_secs(20),
        || async {
            let got = inbox.got.lock().unwrap();
            (got.len() >= 2).then(|| got.clone())
        },
    )
    .await;
    let (headers, body) = got.last().unwrap();
    verify(secret, headers, body);
    let delivered =
        testkit::eventually("the delivery recorded", Duration::from_secs(5), || async {
            let answer = env.get_at(&b, "/sagas/travel/crashed/webhooks").await;
            let delivery = answer.body["deliveries"][0].clone();
            (delivery["status"] == "delivered").then_some(delivery)
        })
        .await;
    assert_eq!(delivered["webhook"], "config");
    let _ = std::fs::remove_dir_all(&dir);
    env.finish_clean().await;
}

/// The end of a saga is handed to the worker by its driver: it is sent at
/// once, though the worker would not poll for an hour.
#[tokio::test]
async fn a_saga_end_is_sent_at_once_without_polling() {
    let env = Env::start_with(&[], |c| c.webhooks.webhook_poll_ms = 3_600_000).await;
    let (url, inbox) = receiver(0).await;
    // The worker's first poll runs at its start, before this subscription.
    assert_eq!(
        env.post("/webhooks", &json!({ "url": url })).await.status,
        201
    );
    let trip = env
        .get("/trip?tripID=fast&runType=failCarRentalReservation")
        .await;
    assert_eq!(trip.body["status"], "failed", "{}", trip.body);
    let got = await_deliveries(&inbox, 1).await;
    let event: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(
        (
            &event["type"],
            &event["data"]["id"],
            &event["data"]["failed_step"]
        ),
        (
            &json!("saga.failed"),
            &json!("fast"),
            &json!("ReserveCarRental")
        )
    );
    assert_eq!(
        event["data"]["steps"].as_array().unwrap().len(),
        4,
        "the saga as its driver saw it: {event}"
    );
    let delivered =
        testkit::eventually("the delivery recorded", Duration::from_secs(5), || async {
            let answer = env.get("/sagas/travel/fast/webhooks").await;
            let delivery = answer.body["deliveries"][0].clone();
            (delivery["status"] == "delivered").then_some(delivery)
        })
        .await;
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(delivered["last_status"], 204);
    env.finish_clean().await;
}

/// kill -9 while the first attempt is in flight: the delivery was claimed
/// by the statement that ended the saga. The same process restarted gives
/// its claims back at once (the claim of a 10 s attempt lasts 25 s, longer
/// than the wait for the delivery).
#[tokio::test]
async fn a_delivery_in_flight_at_a_crash_is_sent_again_by_the_restarted_process() {
    sent_again_after_a_crash(10_000, |c| c.orchestrator_id = Some("a".into())).await;
}

/// The same crash, taken up by another replica once the claim runs out
/// (a 1 s attempt: a 7 s claim).
#[tokio::test]
async fn a_delivery_in_flight_at_a_crash_is_sent_by_another_replica_when_its_claim_runs_out() {
    sent_again_after_a_crash(1_000, |c| c.orchestrator_id = Some("b".into())).await;
}

/// Crashes orchestrator `a` (whose attempts last `timeout_ms`) while a
/// failPayment trip's delivery is in flight, starts one set by `restart`,
/// and checks that it sends the same message again, once.
async fn sent_again_after_a_crash(timeout_ms: u64, restart: impl Fn(&mut orchestrator::Config)) {
    let (url, inbox) = receiver(0).await;
    inbox.hold.store(true, Ordering::SeqCst);
    let configure = |c: &mut orchestrator::Config| {
        c.orchestrator_id = Some("a".into());
        c.webhooks.webhook_poll_ms = 20;
        c.webhooks.webhook_timeout_ms = timeout_ms;
    };
    let mut env = Env::start_with(&[], configure).await;
    let subscribed = env.post("/webhooks", &json!({ "url": url })).await;
    let secret = subscribed.body["secret"].as_str().unwrap().to_owned();
    let trip = env.get("/trip?tripID=in-flight&runType=failPayment").await;
    assert_eq!(trip.body["status"], "failed");
    let first = await_deliveries(&inbox, 1).await;
    env.cluster
        .crash_orchestrator(&env.cluster.orchestrator_url);
    inbox.hold.store(false, Ordering::SeqCst);

    let b = env
        .spawn_orchestrator(|c| {
            configure(c);
            restart(c);
        })
        .await;
    let got = await_deliveries(&inbox, 2).await;
    let (headers, body) = got.last().unwrap();
    verify(&secret, headers, body);
    assert_eq!(
        headers["webhook-id"], first[0].0["webhook-id"],
        "the same message"
    );
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["data"]["id"], "in-flight");
    assert_eq!(
        event["data"]["message"],
        "Your trip in-flight could not be booked: payment failed; flight and car cancelled",
        "the saga read back, with its definition's message"
    );
    let delivered =
        testkit::eventually("the delivery recorded", Duration::from_secs(5), || async {
            let answer = env.get_at(&b, "/sagas/travel/in-flight/webhooks").await;
            let delivery = answer.body["deliveries"][0].clone();
            (delivery["status"] == "delivered").then_some(delivery)
        })
        .await;
    assert_eq!(delivered["attempts"], 2);
    assert_eq!(inbox.got.lock().unwrap().len(), 2, "sent again once");
    env.finish_clean().await;
}

#[tokio::test]
async fn subscriptions_refuse_bad_input() {
    let env = Env::start().await;
    for body in [
        json!({ "url": "not a url" }),
        json!({ "url": "ftp://example.com/x" }),
        json!({ "url": "http://example.com/x", "event_types": ["saga.maybe"] }),
        json!({ "url": "http://example.com/x", "definitions": ["no spaces"] }),
    ] {
        let answer = env.post("/webhooks", &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.body["error"], "invalid_input");
    }
    let unknown = env
        .post(
            "/webhooks",
            &json!({ "url": "http://x.example", "secret": "mine" }),
        )
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    let missing = env
        .send(
            reqwest::Method::DELETE,
            "/webhooks/wh_none",
            "application/json",
            String::new(),
        )
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let config = env
        .send(
            reqwest::Method::DELETE,
            "/webhooks/config",
            "application/json",
            String::new(),
        )
        .await;
    assert_eq!(config.status, 409, "{}", config.body);
    let none = env.get("/sagas/travel/nobody/webhooks").await;
    assert_eq!(none.status, 404, "{}", none.body);
    env.finish().await;
}

#[tokio::test]
async fn a_stuck_compensation_is_sent_once() {
    let (env, proxies) = Env::start_proxied(|c| {
        c.retry.stuck_after_secs = 0;
        c.webhooks.webhook_poll_ms = 20;
    })
    .await;
    let (url, inbox) = receiver(0).await;
    let only = json!({ "url": url, "event_types": ["saga.compensation_stuck"] });
    assert_eq!(env.post("/webhooks", &only).await.status, 201);
    proxies.cars.set_faults(faultproxy::Faults {
        unavailable_rate: 1.0,
        ..faultproxy::Faults::default()
    });
    env.get("/trip?tripID=stuck-1&wait=0").await;
    let got = await_deliveries(&inbox, 1).await;
    let event: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(event["type"], "saga.compensation_stuck");
    assert_eq!(event["data"]["id"], "stuck-1");
    assert!(
        event["data"]["message"]
            .as_str()
            .unwrap()
            .contains("is stuck being undone: CancelRentalReservation has failed"),
        "{event}"
    );
    proxies.cars.set_faults(faultproxy::Faults::default());
    env.saga_when("stuck-1", "the saga to fail", |s| s["status"] == "failed")
        .await;
    assert_eq!(
        inbox.got.lock().unwrap().len(),
        1,
        "sent once, and no end event"
    );
    env.finish_clean().await;
}
