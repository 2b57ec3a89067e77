//! The console's pages over real HTTP and in a real Chromium: the list and
//! its counts, a saga's page with its graph, the start form, the actions,
//! the definitions, and their answers to bad addresses.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::support::{Env, held_trip};

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
    // Each step's row has its start and how long it took; one not reached,
    // neither.
    let row = |step: &str| {
        let at = html.find(&format!("<tr data-step=\"{step}\">")).unwrap();
        html[at..at + html[at..].find("</tr>").unwrap()].to_owned()
    };
    let took = |row: &str| {
        let cells: Vec<&str> = row.split("<td").collect();
        let cell = cells[5].trim_end().trim_end_matches("</td>");
        cell[cell.find('>').unwrap() + 1..].to_owned()
    };
    let payment = took(&row("ProcessPayment"));
    assert!(
        ["µs", "ms", " s"]
            .iter()
            .any(|unit| payment.ends_with(unit)),
        "{payment:?}"
    );
    assert_eq!(took(&row("ConfirmFlight")), "");
    // The input is shown as text, never as markup.
    assert!(
        html.contains("script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert"));
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
    let next = html.find("rel=\"next\"").expect("a link to older sagas");
    let at = html[..next].rfind("href=\"").unwrap();
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

/// The state of each step of the graph on the browser's page.
async fn states_in(browser: &Browser) -> Vec<(String, String)> {
    let script = "return Array.from(document.querySelectorAll('g.node'))
        .map(g => [g.dataset.step, g.dataset.state]);";
    let states: Value = browser.client.execute(script, vec![]).await.unwrap();
    serde_json::from_value(states).unwrap()
}

/// The compensations' `succeeded` rows of the page's log came in the
/// order they ran: the payment's, the car's, the flight's.
async fn assert_undone_in_order(browser: &Browser) {
    let script = "return Array.from(document.querySelectorAll('#log tbody tr'))
        .map(tr => tr.children[1].textContent + ' ' + tr.children[2].textContent);";
    let rows: Vec<String> =
        serde_json::from_value(browser.client.execute(script, vec![]).await.unwrap()).unwrap();
    let undone: Vec<&str> = rows
        .iter()
        .filter_map(|row| row.strip_suffix(" succeeded"))
        .filter(|step| !step.starts_with("Reserve"))
        .collect();
    assert_eq!(
        undone,
        [
            "RefundPayment",
            "CancelRentalReservation",
            "CancelFlightReservation"
        ],
        "{rows:?}"
    );
}

fn state_of<'a>(states: &'a [(String, String)], step: &str) -> &'a str {
    &states.iter().find(|(s, _)| s == step).unwrap().1
}

/// In a real Chromium: the page of a saga held on its payment follows the
/// saga to its end by itself (its events), without being reloaded.
#[tokio::test]
async fn a_saga_page_follows_its_saga_live_in_a_browser() {
    let (env, proxies) = held_trip(
        "tripID=live-1&runType=failPayment",
        |p| &p.payments,
        "/payments",
    )
    .await;

    let browser = Browser::start(1280).await;
    let page = format!("{}/ui/sagas/travel/live-1", env.cluster.orchestrator_url);
    browser.goto(&page).await;
    browser.mark_document().await;
    let before = states_in(&browser).await;
    assert_eq!(state_of(&before, "ProcessPayment"), "running", "{before:?}");
    assert_eq!(state_of(&before, "RefundPayment"), "not-reached");

    proxies.payments.release();
    let after = testkit::eventually(
        "the page to show the saga undone",
        Duration::from_secs(15),
        || async {
            let states = states_in(&browser).await;
            (state_of(&states, "CancelFlightReservation") == "compensated").then_some(states)
        },
    )
    .await;
    for (step, state) in [
        ("ProcessPayment", "failed"),
        ("RefundPayment", "compensated"),
        ("CancelRentalReservation", "compensated"),
        ("ConfirmFlight", "not-reached"),
    ] {
        assert_eq!(state_of(&after, step), state, "{step}: {after:?}");
    }
    assert_undone_in_order(&browser).await;
    assert!(
        browser.same_document().await,
        "updated in place, not reloaded"
    );
    let status: Value = browser
        .client
        .execute(
            "return document.querySelector('h1 .status').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!("failed"));
    browser.screenshot("console-saga").await;
    browser.close().await;
    env.finish_clean().await;
}

/// The text of the count of `status` above the list.
async fn count(browser: &Browser, status: &str) -> String {
    browser
        .text(&format!("[data-count={status}]"))
        .await
        .unwrap_or_default()
}

/// In a real Chromium: the list's counts and rows follow the sagas as they
/// start and end, without a reload.
#[tokio::test]
async fn the_list_and_its_counts_follow_the_sagas_live() {
    let (env, proxies) = held_trip("tripID=list-1", |p| &p.payments, "/payments").await;
    let browser = Browser::start(1280).await;
    browser
        .goto(&format!("{}/ui", env.cluster.orchestrator_url))
        .await;
    browser.mark_document().await;
    // Waits until the counts read `running` and `succeeded`.
    let counted = async |what: &str, running: &str, succeeded: &str| {
        testkit::eventually(what, Duration::from_secs(15), || async {
            (count(&browser, "running").await == running
                && count(&browser, "succeeded").await == succeeded)
                .then_some(())
        })
        .await;
    };
    // The page brings itself again at once (the stream's first event): the
    // counts are read once it has settled.
    counted("the held trip counted running", "1", "0").await;
    proxies.payments.release();
    counted("the trip counted succeeded", "0", "1").await;
    let failed = env.get("/trip?tripID=list-2&runType=failPayment").await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.body);
    let list = testkit::eventually("the new trip listed", Duration::from_secs(15), || async {
        let list = browser.text("#list").await?;
        (list.contains("list-2") && count(&browser, "failed").await == "1").then_some(list)
    })
    .await;
    assert!(
        list.find("list-2") < list.find("list-1"),
        "newest first: {list}"
    );
    assert!(
        browser.same_document().await,
        "updated in place, not reloaded"
    );
    browser.screenshot("console-sagas").await;
    browser.close().await;
    env.finish_clean().await;
}

/// In a real Chromium: a compensation retried hundreds of times takes a
/// few lines of the log until its fold is opened, and every row is there.
#[tokio::test]
async fn a_long_history_is_folded_until_opened() {
    let (env, proxies) = crate::support::Env::start_proxied(|c| {
        c.retry.retry_initial_delay_ms = 1;
        c.retry.retry_multiplier = 1.0;
        c.retry.compensation_max_delay_ms = 1;
        c.retry.retry_jitter = false;
        c.retry.retry_budget_min_per_sec = 10_000;
    })
    .await;
    // The car's reservation fails; its cancel answers 503 until let be.
    let unavailable = faultproxy::Faults {
        unavailable_rate: 1.0,
        ..faultproxy::Faults::default()
    };
    proxies.cars.set_faults(unavailable);
    let started = env.get("/trip?tripID=long-1&wait=0").await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    env.saga_when("long-1", "hundreds of cancel attempts", |s| {
        s["steps"].as_array().unwrap().iter().any(|step| {
            step["step"] == "CancelRentalReservation" && step["attempts"].as_i64() >= Some(300)
        })
    })
    .await;
    proxies.cars.set_faults(faultproxy::Faults::default());
    env.saga_when("long-1", "the saga to end", |s| s["status"] == "failed")
        .await;
    let rows = env.log("long-1").await.len();

    let browser = Browser::start(1280).await;
    browser
        .goto(&format!(
            "{}/ui/sagas/travel/long-1",
            env.cluster.orchestrator_url
        ))
        .await;
    let shown = "return Array.from(document.querySelectorAll('#log tr'))
        .filter(tr => tr.offsetParent !== null && !tr.closest('thead')).length;";
    let visible: usize =
        serde_json::from_value(browser.client.execute(shown, vec![]).await.unwrap()).unwrap();
    assert!(visible < 30, "{visible} rows shown of {rows}");
    let fold = browser.text("[data-fold]").await.unwrap();
    assert!(
        fold.starts_with("Show ") && fold.ends_with("more rows of CancelRentalReservation"),
        "{fold}"
    );
    browser.click("[data-fold]").await;
    let visible: usize =
        serde_json::from_value(browser.client.execute(shown, vec![]).await.unwrap()).unwrap();
    assert_eq!(visible, rows + 1, "every row, and the fold's own");
    browser.close().await;
    env.finish_clean().await;
}

/// In a real Chromium: a failPayment trip started from the form (its
/// fields prefilled from the definition's defaults) opens its page, which
/// shows it undone in order; a second start of that id with other input
/// shows the API's refusal on the form.
#[tokio::test]
async fn a_trip_started_from_the_form_opens_its_page() {
    let env = Env::start().await;
    let browser = Browser::start(1280).await;
    let base = &env.cluster.orchestrator_url;
    let fill = async |id: &str, run_type: &str| {
        browser
            .goto(&format!("{base}/ui/start?definition=travel"))
            .await;
        let city = browser.element("input[name=depart_city]").await;
        assert_eq!(
            city.prop("value").await.unwrap().as_deref(),
            Some("Detroit")
        );
        let run = browser.element("select[name=run_type]").await;
        run.select_by_value(run_type).await.unwrap();
        browser.type_into("#saga-id", id).await;
    };
    fill("form-1", "failPayment").await;
    browser.screenshot("console-start").await;
    let submit = "#start button[type=submit]";
    browser.click(submit).await;
    let page = format!("{base}/ui/sagas/travel/form-1");
    testkit::eventually("the saga's page", Duration::from_secs(10), || async {
        let url = browser.client.current_url().await.unwrap();
        (url.as_str() == page).then_some(())
    })
    .await;
    testkit::eventually("the saga undone", Duration::from_secs(10), || async {
        let states = states_in(&browser).await;
        (state_of(&states, "CancelFlightReservation") == "compensated").then_some(())
    })
    .await;
    assert_undone_in_order(&browser).await;
    let saga = env.get("/sagas/travel/form-1").await;
    assert_eq!(saga.body["input"]["run_type"], "failPayment");
    assert_eq!(
        saga.body["input"]["rental"], "BMW",
        "the defaults filled in"
    );

    // The same id with other input: the API's 409, shown on the form.
    fill("form-1", "success").await;
    browser.click(submit).await;
    let refusal = browser.text_when_any("#start-error").await;
    assert!(refusal.contains("form-1"), "{refusal}");
    browser.close().await;
    env.finish_clean().await;
}

/// In a real Chromium: an operator aborts, from its page, a saga whose car
/// reservation is held; the page shows it compensate, and the log the
/// action's reason.
#[tokio::test]
async fn an_operator_aborts_a_held_saga_from_its_page() {
    let (env, proxies) = held_trip("tripID=abort-ui", |p| &p.cars, "/rentals").await;

    let browser = Browser::start(1280).await;
    let page = format!("{}/ui/sagas/travel/abort-ui", env.cluster.orchestrator_url);
    browser.goto(&page).await;
    let field = async |name: &str, text: &str| {
        let css = format!("#act-form input[name={name}]");
        browser.type_into(&css, text).await;
    };
    field("reason", "the customer called to cancel").await;
    field("actor", "ops@example.com").await;
    browser.click("#act-form button[value=abort]").await;
    let asked = browser.client.get_alert_text().await.unwrap();
    assert!(asked.contains("abort saga abort-ui"), "{asked}");
    browser.client.accept_alert().await.unwrap();

    let states = testkit::eventually("the saga undone", Duration::from_secs(15), || async {
        let states = states_in(&browser).await;
        (state_of(&states, "CancelFlightReservation") == "compensated").then_some(states)
    })
    .await;
    assert_eq!(
        state_of(&states, "ReserveCarRental"),
        "failed",
        "{states:?}"
    );
    assert_eq!(state_of(&states, "CancelRentalReservation"), "compensated");
    let log = browser.text("#log").await.unwrap();
    assert!(log.contains("the customer called to cancel"), "{log}");
    assert!(log.contains("ops@example.com"), "{log}");
    // Ended: nothing left to act on.
    testkit::eventually("the actions gone", Duration::from_secs(5), || async {
        browser.text("#act").await.is_none().then_some(())
    })
    .await;
    proxies.cars.release();
    browser.close().await;
    env.finish_clean().await;
}

/// Puts `text` in the try form's document, as a paste does.
async fn paste(browser: &Browser, text: &str) {
    let script = "document.querySelector('#try textarea').value = arguments[0]; return null;";
    browser
        .client
        .execute(script, vec![json!(text)])
        .await
        .unwrap();
}

/// In a real Chromium: a broken document pasted in the definitions page
/// shows its finding at its path; a new version registered from there is
/// listed, and its page draws its graph.
#[tokio::test]
async fn a_definition_is_tried_and_registered_from_its_page() {
    let env = Env::start().await;
    let travel =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas/travel.yaml"))
            .unwrap();
    let browser = Browser::start(1280).await;
    let base = &env.cluster.orchestrator_url;
    browser.goto(&format!("{base}/ui/definitions")).await;
    let listed = browser.text("#definitions").await.unwrap();
    assert!(listed.contains("version 2"), "{listed}");

    paste(
        &browser,
        &travel.replace("participant: cars", "participant: nobody"),
    )
    .await;
    browser.click("#try button[value=validate]").await;
    let answer = browser.text_when_any("#try-result").await;
    assert!(answer.contains("Not valid."), "{answer}");
    assert!(
        answer.contains("error unknown_participant at steps[1].call.participant"),
        "{answer}"
    );
    let shown =
        "document.getElementById('try-result').scrollIntoView({block: 'center'}); return null;";
    browser.client.execute(shown, vec![]).await.unwrap();
    browser.screenshot("console-definitions").await;

    // The valid document, dry-run with the payment refused.
    paste(&browser, &travel).await;
    browser.click("#try button[value=validate]").await;
    let outcome = browser.element("input[name=outcome-ProcessPayment]").await;
    outcome.clear().await.unwrap();
    outcome.send_keys("422").await.unwrap();
    let input = "document.querySelector('#try textarea[name=input]').value = '{\"run_type\": \"failPayment\"}'; return null;";
    browser.client.execute(input, vec![]).await.unwrap();
    browser.click("#try button[value=dry-run]").await;
    browser.text_when_any("#dry-run-calls").await;
    let steps = "return Array.from(document.querySelectorAll('#dry-run-calls tbody tr'))
        .map(tr => tr.children[1].textContent);";
    let steps: Vec<String> =
        serde_json::from_value(browser.client.execute(steps, vec![]).await.unwrap()).unwrap();
    assert_eq!(
        steps,
        [
            "ReserveFlight",
            "ReserveCarRental",
            "ProcessPayment",
            "RefundPayment",
            "CancelRentalReservation",
            "CancelFlightReservation"
        ]
    );
    let verdict = browser.text("#try-result").await.unwrap();
    assert!(
        verdict.contains("would end failed after 6 calls"),
        "{verdict}"
    );
    let show = "document.getElementById('dry').scrollIntoView(); return null;";
    browser.client.execute(show, vec![]).await.unwrap();
    browser.screenshot("console-dry-run").await;

    browser.type_into("#try input[name=name]", "travel").await;
    paste(&browser, &travel.replace("version: 2", "version: 3")).await;
    browser.click("#try button[value=register]").await;
    testkit::eventually("version 3 listed", Duration::from_secs(10), || async {
        let table = browser.text("#definitions").await?;
        table.contains("version 3").then_some(())
    })
    .await;
    let versions = env.get("/definitions/travel").await;
    assert_eq!(versions.status, StatusCode::OK, "{}", versions.body);
    assert!(
        versions.body.to_string().contains("\"version\":3"),
        "{}",
        versions.body
    );

    browser
        .goto(&format!("{base}/ui/definitions/travel/3"))
        .await;
    let states = states_in(&browser).await;
    assert_eq!(states.len(), 8, "{states:?}");
    assert!(
        states.iter().all(|(_, state)| state == "not-reached"),
        "{states:?}"
    );
    let (status, _, _) = page(&env, "/ui/definitions/travel/9").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    browser.close().await;
    env.finish_clean().await;
}

/// Every text on the page whose contrast with what it is drawn on is below
/// WCAG's AA for normal text (4.5:1): the HTML's text against the first
/// opaque background behind it, and each graph node's text against its
/// box. Each as `tag "text" ratio`.
const LOW_CONTRAST: &str = r#"
const parse = (c) => {
  const m = /rgba?\(([^)]+)\)/.exec(c || "");
  if (!m) return null;
  const [r, g, b, a = 1] = m[1].split(",").map(Number);
  return { r, g, b, a };
};
const luminance = ({ r, g, b }) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const ratio = (fg, bg) => {
  const [hi, lo] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
};
const behind = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0) return c;
  }
  return { r: 255, g: 255, b: 255, a: 1 };
};
const low = [];
const check = (el, fg, bg) => {
  const r = ratio(fg, bg);
  if (r < 4.5) low.push(`${el.tagName} "${el.textContent.trim().slice(0, 40)}" ${r.toFixed(2)}`);
};
for (const el of document.querySelectorAll("body *")) {
  if (el.closest("svg") || el.closest("[hidden]") || el.getClientRects().length === 0) continue;
  const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (text) check(el, parse(getComputedStyle(el).color), behind(el));
}
for (const node of document.querySelectorAll("svg g.node")) {
  const box = parse(getComputedStyle(node.querySelector("rect")).fill);
  for (const t of node.querySelectorAll("text")) check(t, parse(getComputedStyle(t).fill), box);
}
return low;
"#;

/// In a real Chromium, as wide as a phone: no page is wider than the
/// screen (wide tables and the graph scroll in their own boxes), no text
/// is below AA contrast, on every page and in every state a graph node
/// takes in the tests; and a saga is started with the keyboard alone, each
/// focused control outlined.
#[tokio::test]
async fn the_pages_fit_a_phone_read_clearly_and_work_from_the_keyboard() {
    let (env, proxies) = held_trip(
        "tripID=a11y-held&runType=failPayment",
        |p| &p.payments,
        "/payments",
    )
    .await;
    let failed = env.get("/trip?tripID=a11y-1&runType=failPayment").await;
    assert_eq!(failed.body["status"], "failed", "{}", failed.body);
    let browser = Browser::start(390).await;
    let base = &env.cluster.orchestrator_url;
    for path in [
        "/ui",
        "/ui/sagas/travel/a11y-1",
        "/ui/sagas/travel/a11y-held",
        "/ui/start",
        "/ui/definitions",
        "/ui/definitions/travel/2",
    ] {
        browser.goto(&format!("{base}{path}")).await;
        let wide: Value = browser
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .unwrap();
        assert!(wide[0].as_u64() <= wide[1].as_u64(), "{path}: {wide}");
        let low: Vec<String> =
            serde_json::from_value(browser.client.execute(LOW_CONTRAST, vec![]).await.unwrap())
                .unwrap();
        assert!(low.is_empty(), "{path}: {low:#?}");
    }
    proxies.payments.release();

    // The start form, from the keyboard: Tab to the id, type it, Tab to
    // Start, Enter.
    browser.goto(&format!("{base}/ui/start")).await;
    const TAB: &str = "\u{e004}";
    const ENTER: &str = "\u{e007}";
    let mut typed = false;
    for _ in 0..40 {
        let active = browser.client.active_element().await.unwrap();
        let outlined: Value = browser
            .client
            .execute(
                "const s = getComputedStyle(document.activeElement);
                 return document.activeElement === document.body || s.outlineStyle !== 'none';",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(outlined, json!(true), "the focused control is outlined");
        let id = active.attr("id").await.unwrap();
        let text = active.text().await.unwrap_or_default();
        if id.as_deref() == Some("saga-id") && !typed {
            active.send_keys("keyboard-1").await.unwrap();
            typed = true;
        }
        if typed && text == "Start" {
            active.send_keys(ENTER).await.unwrap();
            break;
        }
        active.send_keys(TAB).await.unwrap();
    }
    assert!(typed, "the id field is reached with Tab");
    let page = format!("{base}/ui/sagas/travel/keyboard-1");
    testkit::eventually("the saga's page", Duration::from_secs(10), || async {
        let url = browser.client.current_url().await.unwrap();
        (url.as_str() == page).then_some(())
    })
    .await;
    env.saga_when("keyboard-1", "the saga to end", |s| {
        s["status"] == "succeeded"
    })
    .await;
    browser.close().await;
    env.finish_clean().await;
}
