//! Nothing a caller sends produces a 5xx or a saga: each mistake is a 4xx
//! JSON error that names it.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::Env;

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_and_start_nothing() {
    let env = Env::start().await;
    let long = "x".repeat(65);
    let cases = [
        (
            "/trip?runType=failEverything&tripID=t1",
            StatusCode::BAD_REQUEST,
            "invalid_trip",
            "runType",
        ),
        (
            "/trip?runType=success&tripID=",
            StatusCode::BAD_REQUEST,
            "invalid_trip",
            "empty",
        ),
        (
            &format!("/trip?tripID={long}")[..],
            StatusCode::BAD_REQUEST,
            "invalid_trip",
            "64",
        ),
        (
            "/trip?tripID=a%2Fb",
            StatusCode::BAD_REQUEST,
            "invalid_trip",
            "/",
        ),
        (
            "/trip?tripID=a%20b",
            StatusCode::BAD_REQUEST,
            "invalid_trip",
            "' '",
        ),
        (
            "/trip?tripID=t1&wait=soon",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "wait",
        ),
        (
            "/trip?tripID=t1&wait=61",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "wait",
        ),
        (
            "/trips?status=lost",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "status",
        ),
        (
            "/trips?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        (
            "/trips?limit=501",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        (
            "/trips?before=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "cursor",
        ),
        (
            "/trips/nobody",
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            "/trips/a%20b",
            StatusCode::BAD_REQUEST,
            "invalid_trip",
            "' '",
        ),
        ("/nowhere", StatusCode::NOT_FOUND, "not_found", "route"),
    ];
    for (path, status, code, mentions) in cases {
        let answer = env.get(path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert_eq!(answer.body["error"], code, "{path}");
        let message = answer.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{path}: {message:?} should mention {mentions:?}"
        );
    }

    let bodies = [
        (
            json!({ "trip_id": "t2", "run_type": "nope" }),
            StatusCode::BAD_REQUEST,
            "invalid_trip",
        ),
        (
            json!({ "trip_id": "t2", "depart_citty": "Paris" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "trip_id": "t2", "amount": true }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "trip_id": "t2", "depart_time": "tomorrow" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "trip_id": "t2", "amount": "-1" }),
            StatusCode::BAD_REQUEST,
            "invalid_trip",
        ),
        (
            json!({ "trip_id": "t2", "currency": "dollars" }),
            StatusCode::BAD_REQUEST,
            "invalid_trip",
        ),
        (
            json!({ "trip_id": "t2", "rental": "" }),
            StatusCode::BAD_REQUEST,
            "invalid_trip",
        ),
        (
            json!({ "trip_id": "t2", "rental_from": "2021-07-17T00:00:00Z", "rental_to": "2021-07-09T00:00:00Z" }),
            StatusCode::BAD_REQUEST,
            "invalid_trip",
        ),
        (
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, code) in bodies {
        let answer = env.post("/trips", &body).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (status, &json!(code)),
            "{body}: {}",
            answer.body
        );
    }
    let answer = env
        .post_raw("/trips", Some("application/json"), "{\"trip_id\": ")
        .await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (StatusCode::BAD_REQUEST, &json!("malformed_json"))
    );
    let answer = env.post_raw("/trips", None, "{}").await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = env.post_raw("/trips", Some("application/json"), "").await;
    assert!(
        answer.status.is_client_error(),
        "an empty body: {}",
        answer.status
    );
    let answer = env.post_raw("/trip", Some("application/json"), "{}").await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (StatusCode::METHOD_NOT_ALLOWED, &json!("method_not_allowed"))
    );

    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        0,
        "no saga was started"
    );
    env.finish().await;
}

/// `POST` `body` (raw JSON text) to `url`, signed with `key` if given.
async fn post_signed(
    url: &str,
    body: String,
    key: Option<&common::auth::Key>,
) -> (StatusCode, serde_json::Value) {
    let headers = key.map_or_else(Default::default, |key| {
        crate::support::signed(key, &reqwest::Method::POST, url, body.as_bytes())
    });
    let answer = reqwest::Client::new()
        .post(url)
        .headers(headers)
        .header("content-type", "application/json")
        .header(common::wire::IDEMPOTENCY_KEY, "ctl-1:ReserveFlight")
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = answer.status();
    (status, answer.json().await.unwrap_or_default())
}

/// `POST`s `body` to `url` in chunks, its length not said: the status and
/// the answer's text.
async fn post_chunked(url: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(url).unwrap();
    let address = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        url.path()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(16 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before all is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn control_characters_and_oversized_bodies_get_a_4xx_naming_them_at_every_service() {
    let env = Env::start().await;
    let orchestrator = &env.cluster.orchestrator_url;
    // The participants take only the orchestrator's calls: these are
    // signed as its are.
    let key = |url: &str| {
        use cluster::Participant::*;
        [
            (Flights, &env.cluster.flights_url),
            (Cars, &env.cluster.cars_url),
            (Payments, &env.cluster.payments_url),
        ]
        .into_iter()
        .find(|(_, base)| url.starts_with(base.as_str()))
        .map(|(p, _)| env.cluster.key(p))
    };
    let post_json = |url: String, body: String| {
        let key = key(&url);
        async move { post_signed(&url, body, key.as_ref()).await }
    };
    // In a JSON body (escaped, as JSON carries them), at any depth.
    for (url, body, mentions) in [
        (
            format!("{orchestrator}/trips"),
            r#"{"trip_id": "ctl-1", "depart_city": "Det\u0000roit"}"#,
            "field depart_city holds the control character U+0000 (NUL)",
        ),
        (
            format!("{orchestrator}/sagas/travel"),
            r#"{"id": "ctl-1", "input": {"rental": "B\u001bMW"}}"#,
            "field input.rental holds the control character U+001B (escape)",
        ),
        (
            format!("{orchestrator}/sagas/travel/ctl-1/abort"),
            r#"{"reason": "\u0000", "actor": "me"}"#,
            "field reason",
        ),
        (
            format!("{orchestrator}/webhooks"),
            r#"{"url": "http://127.0.0.1:9/\u0000"}"#,
            "field url",
        ),
        (
            format!("{}/reservations", env.cluster.flights_url),
            r#"{"trip_id": "ctl-1", "run_type": "success", "depart_city": "\u0000", "depart_time": "2021-07-07T06:00:00Z", "arrive_city": "B", "arrive_time": "2021-07-09T08:00:00Z"}"#,
            "field depart_city",
        ),
        (
            format!("{}/rentals", env.cluster.cars_url),
            r#"{"trip_id": "ctl-1", "run_type": "success", "rental": "\b", "rental_from": "2021-07-09T00:00:00Z", "rental_to": "2021-07-17T00:00:00Z"}"#,
            "field rental holds the control character U+0008 (backspace)",
        ),
        (
            format!("{}/payments", env.cluster.payments_url),
            r#"{"trip_id": "ctl-1", "run_type": "success", "amount": "10.00", "currency": "US\u0000"}"#,
            "field currency",
        ),
    ] {
        let (status, answer) = post_json(url.clone(), body.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {answer}");
        assert_eq!(answer["error"], "control_character", "{url}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(mentions), "{url}: {message}");
    }
    // In a URL, percent-encoded: the path or the parameter named.
    for (url, mentions) in [
        (
            format!("{orchestrator}/trips?before=1.%00"),
            "query parameter \"before\"",
        ),
        (
            format!("{orchestrator}/trip?tripID=ctl-2&depart_city=Paris%00"),
            "query parameter \"depart_city\"",
        ),
        (
            format!("{orchestrator}/sagas?definition=%1b"),
            "query parameter \"definition\"",
        ),
        (format!("{orchestrator}/sagas/travel/ctl%00/events"), "path"),
        (format!("{orchestrator}/definitions/tr%00avel"), "path"),
        (format!("{orchestrator}/ui/sagas/travel/%00"), "path"),
        (
            format!("{}/reservations/ctl%00", env.cluster.flights_url),
            "path",
        ),
    ] {
        let answer = reqwest::get(&url).await.expect("GET");
        let status = answer.status();
        let answer: serde_json::Value = answer.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {answer}");
        assert_eq!(answer["error"], "control_character", "{url}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(mentions),
            "{url}: {answer}"
        );
    }
    // A definition whose YAML holds a NUL (a double-quoted escape).
    let document = orchestrator::definition::TRAVEL_YAML.replace(
        "description: Book a flight and a car and take the payment, or undo all of it.",
        "description: \"Bo\\0ok\"",
    );
    assert_ne!(document, orchestrator::definition::TRAVEL_YAML);
    let answer = env
        .send(
            reqwest::Method::POST,
            "/definitions/validate",
            "application/yaml",
            document.clone(),
        )
        .await;
    assert_eq!(answer.body["valid"], false, "{}", answer.body);
    let message = answer.body["diagnostics"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("description holds the control character U+0000"),
        "{}",
        answer.body
    );
    let answer = env
        .send(
            reqwest::Method::PUT,
            "/definitions/travel",
            "application/yaml",
            document,
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    // Tab and line breaks are text, and a backslash before `u0000` is not
    // an escape.
    let (status, answer) = post_json(
        format!("{orchestrator}/trips"),
        r#"{"trip_id": "ctl-3", "depart_city": "Det\\u0000roit"}"#.to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["input"]["depart_city"], "Det\\u0000roit");

    // A body over the limit: 413, as JSON, at the orchestrator and a
    // participant, whether its length is said or not.
    let big = format!("{{\"trip_id\": \"{}\"}}", "x".repeat(100 * 1024));
    for url in [
        format!("{orchestrator}/trips"),
        format!("{}/payments", env.cluster.payments_url),
    ] {
        let (status, answer) = post_json(url.clone(), big.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{url}: {answer}");
        assert_eq!(answer["error"], "body_too_large", "{url}: {answer}");
        let (status, answer) = post_chunked(&url, &big).await;
        assert_eq!(status, 413, "{url}, its length not said: {answer}");
        assert!(
            answer.contains("\"error\""),
            "{url}, its length not said: {answer}"
        );
    }

    // Nothing refused was stored.
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas WHERE saga_id <> 'ctl-3'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM flights.reservations WHERE trip_id <> 'ctl-3'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.webhooks")
            .await,
        0
    );
    env.finish_clean().await;
}
