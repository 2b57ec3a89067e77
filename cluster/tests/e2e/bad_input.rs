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
