//! flights-svc over real HTTP on a fresh database.

use common::db::Db;
use flights_svc::{AppState, app};
use serde_json::{Value, json};
use testkit::contract::Booking;
use testkit::{TestDb, TestServer};

fn reserve_body(trip_id: &str, run_type: &str) -> Value {
    json!({
        "trip_id": trip_id,
        "depart_city": "Detroit",
        "depart_time": "2021-07-07T06:00:00.000Z",
        "arrive_city": "Frankfurt",
        "arrive_time": "2021-07-09T08:00:00.000Z",
        "run_type": run_type,
    })
}

#[tokio::test]
async fn keeps_the_booking_contract() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    Booking {
        url: &server.url,
        collection: "/reservations",
        table: "flights.reservations",
        reserve_body,
        fail_reserve: "failFlightsReservation",
        fail_confirm: "failFlightsConfirmation",
    }
    .check(db.pool())
    .await;
}

#[tokio::test]
async fn stores_the_sample_fields() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    let (status, body) = testkit::contract::post(
        &format!("{}/reservations", server.url),
        &reserve_body("t", "success"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let row: (String, String, String) = sqlx::query_as(
        "SELECT depart_city, arrive_city, to_char(depart_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM flights.reservations WHERE trip_id = 't'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "Detroit".into(),
            "Frankfurt".into(),
            "2021-07-07 06:00".into()
        )
    );
}

/// Timestamps in answers, which SQL builds, read as chrono writes them.
#[tokio::test]
async fn answers_as_the_wire_type_writes_them() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    let mut body = reserve_body("t", "success");
    body["depart_time"] = json!("2021-07-07T06:00:00.5Z");
    body["arrive_time"] = json!("2021-07-09T08:00:00.123456Z");
    let url = format!("{}/reservations", server.url);
    let first =
        testkit::contract::answers_alike::<common::wire::FlightReservation>(&url, &body).await;
    assert_eq!(first["depart_time"], "2021-07-07T06:00:00.500Z");
    assert_eq!(first["arrive_time"], "2021-07-09T08:00:00.123456Z");
}

/// A database that stops answering (a hung server, a dropped NAT entry: the
/// connection stays open, nothing comes back) costs a call its query
/// timeout and a 503 that says to retry, not a call held until TCP gives
/// up; the silent connection is closed, and a retry goes through and books
/// once.
#[tokio::test]
async fn a_database_that_never_answers_is_a_503_and_the_retry_books_once() {
    use std::time::Duration;

    use reqwest::StatusCode;
    use testkit::silent::SilentProxy;

    let db = TestDb::new().await;
    let (proxy, through) = SilentProxy::before(db.url()).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        // A silent connection in the pool holds an acquire this long (its
        // ping).
        .acquire_timeout(Duration::from_secs(1))
        .connect(&through)
        .await
        .unwrap();
    let limit = Duration::from_millis(500);
    let server = TestServer::start(app(AppState {
        db: Db::new(pool).with_query_timeout(limit),
        metrics: Default::default(),
        failure_injection: Default::default(),
    }))
    .await;
    let url = format!("{}/reservations", server.url);
    let reserve = |trip_id: &str| {
        let (url, body) = (url.clone(), reserve_body(trip_id, "success"));
        let key = format!("{trip_id}:ReserveFlight");
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                testkit::contract::post_keyed(&url, Some(&key), &body),
            )
            .await
            .expect("the call waited for ever on a database that does not answer")
        }
    };
    // The Db keeps this call's connection for the next.
    let (status, body) = reserve("before").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let closed_before = proxy.closed();
    let silenced = proxy.silence();
    let (status, body) = reserve("t").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "database_unavailable", "{body}");
    testkit::eventually(
        "the silent connection is closed",
        Duration::from_secs(10),
        || async { (proxy.closed() > closed_before).then_some(()) },
    )
    .await;

    // The retry may be handed another silent connection from the pool,
    // which fails the same way; then a new one.
    let mut attempts = 0;
    let (status, body) = loop {
        attempts += 1;
        match reserve("t").await {
            (StatusCode::SERVICE_UNAVAILABLE, _) if attempts <= silenced => continue,
            other => break other,
        }
    };
    assert_eq!(status, StatusCode::OK, "{body} after {attempts} attempts");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flights.reservations WHERE trip_id = 't'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(rows, 1);
}

/// The binary, as its users start it: `--help` shows no database URL,
/// whatever the environment holds, and `DATABASE_URL_FILE` gives the URL
/// from a file (as a Docker or Kubernetes secret does).
#[tokio::test]
async fn the_database_url_comes_from_a_file_and_is_never_printed() {
    let binary = env!("CARGO_BIN_EXE_flights-svc");
    let help = std::process::Command::new(binary)
        .arg("--help")
        .env(
            "DATABASE_URL",
            "postgres://flights:hunter2@db.invalid/travel",
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");

    let db = TestDb::new().await;
    let file = std::env::temp_dir().join(format!("database-url-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("{}\n", db.url())).unwrap();
    let mut started = tokio::process::Command::new(binary);
    started
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &file);
    start_until_ready(started).await;

    // A file that cannot be read stops the start, naming the variable.
    let refused = std::process::Command::new(binary)
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", "/nonexistent/database-url")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("DATABASE_URL_FILE=/nonexistent/database-url"),
        "{error}"
    );
    std::fs::remove_file(file).unwrap();
}

/// Starts the binary as `command` says, on a free port, waits until it is
/// ready, and stops it.
async fn start_until_ready(mut command: tokio::process::Command) {
    let port = testkit::procs::free_port().unwrap();
    let mut child = command
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    testkit::eventually(
        "flights-svc ready",
        std::time::Duration::from_secs(20),
        || async {
            let answer = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                .await
                .ok()?;
            answer.status().is_success().then_some(())
        },
    )
    .await;
    child.kill().await.unwrap();
}

/// `flights-svc provision` makes the role its `DATABASE_URL` names the
/// owner of the `flights` schema, as the administrator
/// `DATABASE_ADMIN_URL_FILE` names; the service then starts as that role.
/// A superuser's URL is refused: it is no role of the service's own.
#[tokio::test]
async fn provision_makes_the_services_role_and_the_service_starts_as_it() {
    let binary = env!("CARGO_BIN_EXE_flights-svc");
    let db = TestDb::new().await;
    let admin = std::env::temp_dir().join(format!("admin-url-{}", uuid::Uuid::new_v4()));
    std::fs::write(&admin, db.url()).unwrap();
    let mut own = url::Url::parse(db.url()).unwrap();
    own.set_username("flights").unwrap();
    own.set_password(Some("provisioned-1")).unwrap();

    let provisioned = std::process::Command::new(binary)
        .arg("provision")
        .env("DATABASE_URL", own.as_str())
        .env_remove("DATABASE_ADMIN_URL")
        .env("DATABASE_ADMIN_URL_FILE", &admin)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&provisioned.stdout);
    assert!(
        provisioned.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    assert!(said.contains("role flights owns schema flights"), "{said}");
    assert!(!said.contains("provisioned-1"), "{said}");
    let owner: String = sqlx::query_scalar(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'flights'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(owner, "flights");

    let mut started = tokio::process::Command::new(binary);
    started.env("DATABASE_URL", own.as_str());
    start_until_ready(started).await;

    let refused = std::process::Command::new(binary)
        .arg("provision")
        .env("DATABASE_URL", db.url())
        .env("DATABASE_ADMIN_URL", db.url())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("is a superuser"), "{error}");
    std::fs::remove_file(admin).unwrap();
}

/// With `ALLOW_FAILURE_INJECTION=false`, reserve and confirm refuse every
/// run type but success with a 400 and change nothing; cancel still
/// undoes whatever is there.
#[tokio::test]
async fn with_failure_injection_off_other_run_types_are_refused_but_cancel_still_works() {
    let db = TestDb::new().await;
    let server = TestServer::start(app(AppState {
        db: Db::new(db.new_pool().await),
        metrics: Default::default(),
        failure_injection: common::booking::FailureInjection { allowed: false },
    }))
    .await;
    let reservations = format!("{}/reservations", server.url);
    for run_type in ["failFlightsReservation", "failPayment"] {
        let (status, body) =
            testkit::contract::post(&reservations, &reserve_body("off-1", run_type)).await;
        assert_eq!(status, 400, "{run_type}: {body}");
        assert_eq!(body["error"], "failure_injection_disabled", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("ALLOW_FAILURE_INJECTION=false"),
            "{body}"
        );
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM flights.reservations")
            .fetch_one(db.pool())
            .await
            .unwrap()
    };
    assert_eq!(count().await, 0, "nothing reserved");

    let (status, body) =
        testkit::contract::post(&reservations, &reserve_body("off-1", "success")).await;
    assert_eq!(status, 200, "{body}");
    let confirm = format!("{reservations}/off-1/confirm");
    let (status, body) = testkit::contract::post(
        &confirm,
        &json!({ "run_type": "failFlightsConfirmation", "booking_id": body["booking_id"] }),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (
            reqwest::StatusCode::BAD_REQUEST,
            &json!("failure_injection_disabled")
        )
    );
    let (status, body) = testkit::contract::post(
        &format!("{reservations}/off-1/cancel"),
        &json!({ "run_type": "failPayment" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let state: String =
        sqlx::query_scalar("SELECT status::text FROM flights.reservations WHERE trip_id = 'off-1'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(state, "cancelled");
}
