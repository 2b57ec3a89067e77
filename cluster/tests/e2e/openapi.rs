//! `GET /openapi.json` on each of the four services: the document is valid
//! OpenAPI 3.1 whose references all resolve, and real answers of every
//! operation it describes, errors included, match it: the status is one it
//! lists, the body fits that status's schema.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::Env;

/// One service's document, and the operations the test has called.
struct Described {
    service: &'static str,
    base: String,
    api: Value,
    called: BTreeSet<(String, String)>,
    http: reqwest::Client,
    /// The key calls are signed with (a participant's), if any.
    key: Option<common::auth::Key>,
}

/// A call: method, path (with query), and a body with its content type.
struct Call {
    method: Method,
    path: String,
    body: Option<(&'static str, String)>,
}

impl Call {
    fn new(method: Method, path: &str, body: Option<(&'static str, String)>) -> Self {
        let path = path.to_owned();
        Self { method, path, body }
    }
}

fn get(path: &str) -> Call {
    Call::new(Method::GET, path, None)
}

fn post(path: &str, body: &Value) -> Call {
    Call::new(
        Method::POST,
        path,
        Some(("application/json", body.to_string())),
    )
}

impl Described {
    async fn load(service: &'static str, base: &str) -> Self {
        let http = reqwest::Client::new();
        let answer = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{service}");
        let text = answer.text().await.unwrap();
        // The OpenAPI 3.1 object model: a document that does not parse
        // into it is not OpenAPI.
        let spec = oas3::from_json(&text).unwrap_or_else(|err| panic!("{service}: {err}"));
        assert!(
            spec.openapi.starts_with("3.1."),
            "{service}: {}",
            spec.openapi
        );
        assert_eq!(spec.info.title, service);
        let api: Value = serde_json::from_str(&text).unwrap();
        let mut refs = Vec::new();
        collect_refs(&api, &mut refs);
        assert!(!refs.is_empty(), "{service}: no schema is shared");
        for reference in refs {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{service}: {reference} is not local"));
            assert!(
                api.pointer(pointer).is_some(),
                "{service}: {reference} resolves to nothing"
            );
        }
        Self {
            service,
            base: base.to_owned(),
            api,
            called: BTreeSet::new(),
            http,
            key: None,
        }
    }

    /// Sends `call`, checks the answer against the document, and returns
    /// its status and JSON body (`null` when it has none).
    async fn check(&mut self, call: Call) -> (StatusCode, Value) {
        let url = format!("{}{}", self.base, call.path);
        let mut request = self.http.request(call.method.clone(), &url);
        if let Some(key) = &self.key {
            let body = call.body.as_ref().map_or(&b""[..], |(_, b)| b.as_bytes());
            request = request.headers(crate::support::signed(key, &call.method, &url, body));
        }
        if let Some((content_type, body)) = call.body {
            request = request.header("content-type", content_type).body(body);
        }
        let mut answer = request.send().await.unwrap();
        let status = answer.status();
        let content_type = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        // A stream may stay open: its first event is enough.
        let bytes = if content_type.as_deref() == Some("text/event-stream") {
            answer.chunk().await.unwrap().unwrap_or_default()
        } else {
            answer.bytes().await.unwrap()
        };
        let what = format!("{} {} {} -> {status}", self.service, call.method, call.path);

        let path = call.path.split('?').next().unwrap_or_default().to_owned();
        let template = self
            .template(&path)
            .unwrap_or_else(|| panic!("{what}: no path"));
        let method = call.method.as_str().to_lowercase();
        let response = self.api["paths"][&template][&method]["responses"][status.as_str()].clone();
        assert!(
            response.is_object(),
            "{what}: the document does not list this status for {template}"
        );
        self.called.insert((method.clone(), template.clone()));
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(bytes.is_empty(), "{what}: a body where none is described");
            return (status, Value::Null);
        };
        let content_type = content_type.unwrap_or_else(|| panic!("{what}: no content type"));
        let media = content
            .get(&content_type)
            .unwrap_or_else(|| panic!("{what}: {content_type} is not described"));
        if content_type != "application/json" {
            return (status, Value::Null);
        }
        let body: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{what}: not JSON: {err}"));
        // The schema, resolved against the whole document so that its
        // `#/components/...` references resolve.
        let mut root = self.api.clone();
        root["$ref"] = json!(format!(
            "#/paths/{}/{method}/responses/{}/content/{}/schema",
            escape(&template),
            status.as_str(),
            escape(&content_type)
        ));
        assert!(media.get("schema").is_some(), "{what}: no schema");
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|err| panic!("{what}: the schema does not compile: {err}"));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\n{body:#}");
        (status, body)
    }

    /// The document's path template `path` matches, literal segments first.
    fn template(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.api["paths"]
            .as_object()?
            .keys()
            .filter_map(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') {
                        continue;
                    }
                    if part != segment {
                        return None;
                    }
                    literal += 1;
                }
                Some((literal, template.clone()))
            })
            .max()
            .map(|(_, template)| template)
    }

    /// Every operation the document describes has been called.
    fn assert_all_called(&self) {
        let mut missing = Vec::new();
        for (template, item) in self.api["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let key = (method.clone(), template.clone());
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str())
                    && !self.called.contains(&key)
                {
                    missing.push(format!("{method} {template}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{}: not called: {missing:?}",
            self.service
        );
    }

    /// The routes every service has.
    async fn check_shared(&mut self) {
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            assert_eq!(self.check(get(path)).await.0, StatusCode::OK, "{path}");
        }
    }
}

/// A JSON pointer segment, as a URI fragment holds it.
fn escape(segment: &str) -> String {
    segment
        .replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_operation_of_the_orchestrator_answers_as_its_document_says() {
    let env = Env::start().await;
    let mut api = Described::load("orchestrator", &env.cluster.orchestrator_url).await;
    api.check_shared().await;
    let ok = StatusCode::OK;
    let action = json!({"reason": "checked", "actor": "openapi test"});

    // The sample's routes.
    let (status, trip) = api
        .check(get("/trip?tripID=oa-1&runType=failPayment"))
        .await;
    assert_eq!((status, &trip["status"]), (ok, &json!("failed")));
    assert_eq!(
        api.check(get("/trip?tripID=oa-1&runType=success")).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.check(get("/trip?wait=soon")).await.0,
        StatusCode::BAD_REQUEST
    );
    let started = api
        .check(post("/trips?wait=0", &json!({"trip_id": "oa-2"})))
        .await;
    assert!(
        [ok, StatusCode::ACCEPTED].contains(&started.0),
        "{started:?}"
    );
    let typo = api.check(post("/trips", &json!({"trip": "oa-3"}))).await;
    assert_eq!(typo.0, StatusCode::UNPROCESSABLE_ENTITY);
    let untyped = Call::new(Method::POST, "/trips", Some(("text/plain", "{}".into())));
    assert_eq!(
        api.check(untyped).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(api.check(get("/trips")).await.0, ok);
    assert_eq!(
        api.check(get("/trips?limit=0")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(api.check(get("/trips/oa-1")).await.0, ok);
    assert_eq!(api.check(get("/trips/none")).await.0, StatusCode::NOT_FOUND);

    // Sagas of any definition, and the actions.
    let saga = json!({"id": "oa-4", "input": {"run_type": "failCarRentalReservation"}});
    let (status, _) = api.check(post("/sagas/travel?wait=10", &saga)).await;
    assert_eq!(status, ok);
    assert_eq!(
        api.check(post("/sagas/nothing", &json!({}))).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.check(get("/sagas")).await.0, ok);
    assert_eq!(api.check(get("/sagas?stuck=true")).await.0, ok);
    assert_eq!(
        api.check(get("/sagas?stuck=maybe")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, counts) = api.check(get("/sagas/counts")).await;
    assert_eq!((status, &counts["counted_up_to"]), (ok, &json!(10_000)));
    let (status, counts) = api.check(get("/sagas/counts?definition=none")).await;
    assert_eq!((status, &counts["failed"]), (ok, &json!(0)));
    assert_eq!(api.check(get("/sagas/counts/events")).await.0, ok);
    assert_eq!(api.check(get("/sagas/travel/oa-4")).await.0, ok);
    assert_eq!(
        api.check(get("/sagas/travel/none")).await.0,
        StatusCode::NOT_FOUND
    );
    // An ended saga's stream: one event, then it closes.
    assert_eq!(api.check(get("/sagas/travel/oa-4/events")).await.0, ok);
    assert_eq!(
        api.check(get("/sagas/travel/none/events")).await.0,
        StatusCode::NOT_FOUND
    );
    for name in ["retry", "resolve", "abort"] {
        let path = format!("/sagas/travel/oa-4/{name}");
        // A finished saga allows no action.
        assert_eq!(
            api.check(post(&path, &action)).await.0,
            StatusCode::CONFLICT
        );
        let reasonless = api.check(post(&path, &json!({"actor": "me"}))).await;
        assert_eq!(reasonless.0, StatusCode::BAD_REQUEST);
    }

    // Definitions.
    assert_eq!(api.check(get("/definitions")).await.0, ok);
    assert_eq!(api.check(get("/definitions/schema")).await.0, ok);
    assert_eq!(api.check(get("/definitions/travel")).await.0, ok);
    assert_eq!(
        api.check(get("/definitions/none")).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, travel) = api.check(get("/definitions/travel/2")).await;
    assert_eq!(status, ok);
    assert_eq!(
        api.check(get("/definitions/travel/one")).await.0,
        StatusCode::BAD_REQUEST
    );
    let put = |path: &str, body: &Value| {
        Call::new(
            Method::PUT,
            path,
            Some(("application/json", body.to_string())),
        )
    };
    let travel_path = "/definitions/travel";
    assert_eq!(api.check(put(travel_path, &travel)).await.0, ok);
    let mut broken = travel.clone();
    broken["version"] = json!(3);
    broken["steps"][0]["call"]["participant"] = json!("nobody");
    assert_eq!(
        api.check(put(travel_path, &broken)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut renamed = travel.clone();
    renamed["name"] = json!("elsewhere");
    assert_eq!(
        api.check(put(travel_path, &renamed)).await.0,
        StatusCode::BAD_REQUEST
    );
    let mut another = travel.clone();
    another["name"] = json!("trip-copy");
    let copy = "/definitions/trip-copy";
    assert_eq!(api.check(put(copy, &another)).await.0, StatusCode::CREATED);
    let mut changed = another.clone();
    changed["description"] = json!("another text under the same version");
    assert_eq!(api.check(put(copy, &changed)).await.0, StatusCode::CONFLICT);
    let yaml = Some(("application/yaml", "name: x\nversion: 1\n".to_owned()));
    let validate = Call::new(Method::POST, "/definitions/validate", yaml);
    let (status, validation) = api.check(validate).await;
    assert_eq!((status, &validation["valid"]), (ok, &json!(false)));
    let outcomes = json!({"outcomes": {"ProcessPayment": {"status": 422}}});
    let (status, run) = api
        .check(post("/definitions/travel/dry-run", &outcomes))
        .await;
    assert_eq!((status, &run["status"]), (ok, &json!("failed")));
    let document = json!({"document": orchestrator::definition::TRAVEL_YAML, "outcomes": {"ProcessPayment": {"status": 422}}});
    let (status, unregistered) = api.check(post("/definitions/dry-run", &document)).await;
    assert_eq!((status, &unregistered), (ok, &run));
    let partial = json!({"document": "name: x\nversion: 1\n"});
    let (status, refused) = api.check(post("/definitions/dry-run", &partial)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let broken =
        orchestrator::definition::TRAVEL_YAML.replace("participant: cars", "participant: nobody");
    let (status, refused) = api
        .check(post("/definitions/dry-run", &json!({"document": broken})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let unknown = json!({"outcomes": {"Nothing": {"status": 422}}});
    assert_eq!(
        api.check(post("/definitions/travel/dry-run", &unknown))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // Webhooks.
    let (status, subscribed) = api
        .check(post(
            "/webhooks",
            &json!({"url": "http://127.0.0.1:9/hook"}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        api.check(post("/webhooks", &json!({"url": "ftp://x"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(api.check(get("/webhooks")).await.0, ok);
    assert_eq!(api.check(get("/sagas/travel/oa-1/webhooks")).await.0, ok);
    let delete = |path: &str| Call::new(Method::DELETE, path, None);
    let id = subscribed["id"].as_str().unwrap().to_owned();
    let subscription = format!("/webhooks/{id}");
    assert_eq!(
        api.check(delete(&subscription)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.check(delete(&subscription)).await.0,
        StatusCode::NOT_FOUND
    );
    let config = delete("/webhooks/config");
    assert_eq!(api.check(config).await.0, StatusCode::CONFLICT);

    api.assert_all_called();
    env.finish_clean().await;
}

#[tokio::test]
async fn every_operation_of_the_participants_answers_as_its_document_says() {
    let env = Env::start().await;
    let ok = StatusCode::OK;
    let trip = "oa-p1";
    let bookings = [
        (
            "flights-svc",
            env.cluster.flights_url.clone(),
            "/reservations",
            json!({
                "trip_id": trip, "depart_city": "Detroit", "depart_time": "2021-07-07T06:00:00Z",
                "arrive_city": "Frankfurt", "arrive_time": "2021-07-09T08:00:00Z",
            }),
            "failFlightsReservation",
            cluster::Participant::Flights,
        ),
        (
            "cars-svc",
            env.cluster.cars_url.clone(),
            "/rentals",
            json!({
                "trip_id": trip, "rental": "BMW", "rental_from": "2021-07-09T00:00:00Z",
                "rental_to": "2021-07-17T00:00:00Z",
            }),
            "failCarRentalReservation",
            cluster::Participant::Cars,
        ),
    ];
    let mut booking_ids = Vec::new();
    for (service, base, collection, body, fail, participant) in bookings {
        let mut api = Described::load(service, &base).await;
        api.check_shared().await;
        // Unsigned: refused, as documented; then signed as the
        // orchestrator signs.
        assert_eq!(
            api.check(post(collection, &body)).await.0,
            StatusCode::UNAUTHORIZED
        );
        api.key = Some(env.cluster.key(participant));
        let (status, booked) = api.check(post(collection, &body)).await;
        assert_eq!((status, &booked["status"]), (ok, &json!("pending")));
        booking_ids.push(booked["booking_id"].clone());
        let mut failing = body.clone();
        failing["trip_id"] = json!("oa-p2");
        failing["run_type"] = json!(fail);
        assert_eq!(
            api.check(post(collection, &failing)).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let mut bad = body.clone();
        bad["trip_id"] = json!("");
        assert_eq!(
            api.check(post(collection, &bad)).await.0,
            StatusCode::BAD_REQUEST
        );
        let item = format!("{collection}/{trip}");
        assert_eq!(api.check(get(&item)).await.0, ok);
        assert_eq!(
            api.check(get(&format!("{collection}/oa-none"))).await.0,
            StatusCode::NOT_FOUND
        );
        let confirm = format!("{item}/confirm");
        let (status, confirmed) = api.check(post(&confirm, &json!({}))).await;
        assert_eq!((status, &confirmed["status"]), (ok, &json!("confirmed")));
        let cancel = format!("{item}/cancel");
        assert_eq!(api.check(post(&cancel, &json!({}))).await.0, ok);
        assert_eq!(
            api.check(post(&confirm, &json!({}))).await.0,
            StatusCode::CONFLICT
        );
        // A tombstone: its trip fields are null, as the schema allows.
        let tombstone = format!("{collection}/oa-never/cancel");
        let (status, cancelled) = api.check(post(&tombstone, &json!({}))).await;
        assert_eq!((status, &cancelled["status"]), (ok, &json!("cancelled")));
        assert_eq!(
            api.check(post(&format!("{collection}/oa-never/confirm"), &json!({})))
                .await
                .0,
            StatusCode::CONFLICT
        );
        api.assert_all_called();
    }

    let mut api = Described::load("payments-svc", &env.cluster.payments_url).await;
    api.check_shared().await;
    api.key = Some(env.cluster.key(cluster::Participant::Payments));
    let charge = json!({
        "trip_id": trip, "amount": "750.00", "currency": "USD",
        "flight_booking_id": booking_ids[0], "car_booking_id": booking_ids[1],
    });
    let (status, charged) = api.check(post("/payments", &charge)).await;
    assert_eq!((status, &charged["status"]), (ok, &json!("charged")));
    let mut failing = charge.clone();
    failing["trip_id"] = json!("oa-p2");
    failing["run_type"] = json!("failPayment");
    assert_eq!(
        api.check(post("/payments", &failing)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(api.check(get(&format!("/payments/{trip}"))).await.0, ok);
    assert_eq!(
        api.check(get("/payments/oa-none")).await.0,
        StatusCode::NOT_FOUND
    );
    let refund = format!("/payments/{trip}/refund");
    let (status, refunded) = api.check(post(&refund, &json!({}))).await;
    assert_eq!((status, &refunded["status"]), (ok, &json!("refunded")));
    assert_eq!(
        api.check(post("/payments", &charge)).await.0,
        StatusCode::CONFLICT
    );
    let (status, tombstone) = api
        .check(post("/payments/oa-never/refund", &json!({})))
        .await;
    assert_eq!((status, &tombstone["amount"]), (ok, &Value::Null));
    api.assert_all_called();
    env.finish().await;
}
