//! The console's pages over real HTTP: the list, a saga's page with its
//! graph, and their answers to bad addresses.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::Env;

/// A page: its status, content type and text.
async fn page(env: &Env, path: &str) -> (StatusCode, String, String) {
    let url = format!("{}{path}", env.cluster.orchestrator_url);
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, kind, response.text().await.unwrap())
}

/// The state the saga page's graph draws `step` in.
fn drawn<'a>(html: &'a str, step: &str) -> Option<&'a str> {
    let at = html.find(&format!("data-step=\"{step}\" data-state=\""))?;
    let rest = &html[at..];
    let start = rest.find("data-state=\"")? + "data-state=\"".len();
    rest[start..].split('"').next()
}

#[tokio::test]
async fn a_failed_trip_is_drawn_with_each_step_in_its_state() {
    let env = Env::start().await;
    let trip = json!({ "trip_id": "ui-1", "run_type": "failPayment", "depart_city": "<script>alert(1)</script>" });
    assert_eq!(env.post("/trips", &trip).await.body["status"], "failed");

    let (status, kind, html) = page(&env, "/ui/sagas/travel/ui-1").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(kind.starts_with("text/html"), "{kind}");
    for (step, state) in [
        ("ReserveFlight", "succeeded"),
        ("ReserveCarRental", "succeeded"),
        ("ProcessPayment", "failed"),
        ("ConfirmFlight", "not-reached"),
        ("ConfirmCarRental", "not-reached"),
        ("RefundPayment", "compensated"),
        ("CancelRentalReservation", "compensated"),
        ("CancelFlightReservation", "compensated"),
    ] {
        assert_eq!(drawn(&html, step), Some(state), "{step}");
    }
    // Every log row, and the step's idempotency key.
    let rows = env.log("ui-1").await.len();
    let log = &html[html.find("<table id=\"log\">").unwrap()..];
    let log = &log[..log.find("</table>").unwrap()];
    assert_eq!(log.matches("<tr><td>").count(), rows);
    assert!(html.contains("ui-1:ProcessPayment"));
    // The input is shown as text, never as markup.
    assert!(
        html.contains("script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(!html.contains("<script"));
    env.finish_clean().await;
}

#[tokio::test]
async fn the_list_filters_and_pages_as_the_api_does() {
    let env = Env::start().await;
    for (id, run_type) in [
        ("ok-1", "success"),
        ("bad-1", "failFlightsReservation"),
        ("ok-2", "success"),
    ] {
        let trip = json!({ "trip_id": id, "run_type": run_type });
        env.post("/trips", &trip).await;
    }
    let (status, _, html) = page(&env, "/ui").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let newest = html.find("/ui/sagas/travel/ok-2").expect("ok-2 listed");
    let oldest = html.find("/ui/sagas/travel/ok-1").expect("ok-1 listed");
    assert!(newest < oldest, "newest first");

    // The form's empty fields filter nothing; a status filters.
    let (_, _, html) = page(&env, "/ui?definition=&status=failed").await;
    assert!(html.contains("/ui/sagas/travel/bad-1"));
    assert!(!html.contains("/ui/sagas/travel/ok-1"), "{html}");

    // One a page: the link to the older ones carries the filter on.
    let (_, _, html) = page(&env, "/ui?status=succeeded&limit=1").await;
    assert!(html.contains("/ui/sagas/travel/ok-2") && !html.contains("/ui/sagas/travel/ok-1"));
    let at = html.find("href=\"/ui?").expect("a link to older sagas");
    let older = html[at + "href=\"".len()..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(older.contains("status=succeeded"), "{older}");
    let (_, _, html) = page(&env, &older).await;
    assert!(html.contains("/ui/sagas/travel/ok-1"), "{html}");

    // Bad filters and unknown sagas get the API's status, as a page.
    let (status, kind, html) = page(&env, "/ui?status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        kind.starts_with("text/html") && html.contains("unknown status"),
        "{html}"
    );
    for path in [
        "/ui/sagas/travel/nobody",
        "/ui/sagas/shop/ok-1",
        "/ui/sagas/travel/%3Cb%3E",
    ] {
        let (status, _, html) = page(&env, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {html}");
    }
    env.finish_clean().await;
}
