//! With `API_KEYS`, the orchestrator's API and console take calls with a
//! key only, each bounded by its key's scope; the probes, `/metrics` and
//! `/openapi.json` stay open; the console signs in with a cookie.

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::support::Env;

const READ: &str = "read-key-0123456789";
const START: &str = "start-key-0123456789";
const OPERATOR: &str = "operator-key-0123456789";

/// Sends `method path` with `key` as its bearer token (none: no header);
/// answers the status, the headers and the JSON body (Null when not JSON).
async fn call(
    env: &Env,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, header::HeaderMap, Value) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = http.request(method, format!("{}{path}", env.cluster.orchestrator_url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let (status, headers) = (answer.status(), answer.headers().clone());
    (status, headers, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_keys_bound_each_call_by_its_scope_and_the_console_signs_in_with_a_cookie() {
    let env = Env::start_with(&[], |c| {
        c.api_keys = Some(format!(
            "viewer:read:{READ},app:start:{START},ops:operator:{OPERATOR}"
        ));
    })
    .await;
    let start = "/trip?runType=success&tripID=keyed-1";

    // No key, or one that is not among them: 401, nothing started.
    for key in [None, Some("not-a-key-0123456789")] {
        for (method, path) in [(Method::GET, "/sagas"), (Method::GET, start)] {
            let (status, headers, body) = call(&env, method, path, key, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert_eq!(body["error"], "unauthenticated");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    // Open to anyone.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, ..) = call(&env, Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }

    // read: looks, checks documents; starts and changes nothing.
    let (status, ..) = call(&env, Method::GET, "/sagas", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&env, Method::GET, start, Some(READ), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["message"].as_str().is_some_and(
            |m| m.contains("key viewer has the scope read") && m.contains("needs start")
        ),
        "{body}"
    );
    let dry_run = json!({ "input": {} });
    let (status, _, body) = call(
        &env,
        Method::POST,
        "/definitions/travel/dry-run",
        Some(READ),
        Some(dry_run),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        0
    );

    // start: starts; acts on no saga.
    let (status, _, body) = call(&env, Method::GET, start, Some(START), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "succeeded");
    let abort = "/sagas/travel/keyed-1/abort";
    let why = json!({ "reason": "test", "actor": "test" });
    let (status, ..) = call(&env, Method::POST, abort, Some(START), Some(why.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, ..) = call(&env, Method::GET, "/webhooks", Some(START), None).await;
    assert_eq!(status, StatusCode::OK);
    let hook = json!({ "url": "http://127.0.0.1:9/hook" });
    let (status, ..) = call(
        &env,
        Method::POST,
        "/webhooks",
        Some(START),
        Some(hook.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // operator: everything; the saga's own state decides the action.
    let (status, _, body) = call(&env, Method::POST, abort, Some(OPERATOR), Some(why)).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "past the key, a finished saga: {body}"
    );
    let (status, _, body) = call(&env, Method::POST, "/webhooks", Some(OPERATOR), Some(hook)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        env.count("SELECT count(*) FROM orchestrator.sagas").await,
        1
    );

    // The console: a page without a key goes to the login; a key signs in
    // with a cookie the browser keeps to itself.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &env.cluster.orchestrator_url;
    let page = http.get(format!("{base}/ui")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[header::LOCATION], "/ui/login");
    let login = http.get(format!("{base}/ui/login")).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert!(login.text().await.unwrap().contains("name=\"key\""));
    let refused = http
        .post(format!("{base}/ui/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("key=not-a-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(header::SET_COOKIE).is_none());
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("key={READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = signed_in.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let page = http
        .get(format!("{base}/ui"))
        .header(header::COOKIE, pair)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("keyed-1"));
    // The cookie carries the key's scope, no more.
    let refused = http
        .post(format!("{base}/sagas/travel/keyed-1/retry"))
        .header(header::COOKIE, pair)
        .json(&json!({ "reason": "test", "actor": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    env.finish_clean().await;
}
