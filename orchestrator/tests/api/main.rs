//! The orchestrator's store on a fresh database: the version fence and the
//! lease claims that make several processes safe.

use std::time::Duration;

use std::sync::Arc;

use orchestrator::definition::Position;
use orchestrator::saga::StepEvent;
use orchestrator::store::{self, LogEntry, NewSaga, Transition};
use serde_json::json;
use testkit::TestDb;

/// A travel saga to create.
fn saga(id: &str) -> NewSaga {
    NewSaga {
        saga_id: id.into(),
        definition: "travel".into(),
        version: 1,
        input: Arc::new(json!({ "run_type": "success" })),
        first_step: "ReserveFlight".into(),
        deadline: None,
    }
}

fn succeeded_flight(seq: i32) -> Vec<LogEntry> {
    vec![
        LogEntry {
            seq,
            step: "ReserveFlight".into(),
            event: StepEvent::Succeeded,
            attempt: 1,
            detail: json!({}),
        },
        LogEntry {
            seq: seq + 1,
            step: "ReserveCarRental".into(),
            event: StepEvent::Started,
            attempt: 1,
            detail: json!({}),
        },
    ]
}

async fn log_len(db: &TestDb, saga_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orchestrator.saga_log WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_process_that_lost_its_lease_cannot_write() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let t = saga("fenced");
    // Owner a's lease runs out at once.
    assert!(store::create(pool, &t, "a", 0.0).await.unwrap());
    assert!(
        !store::create(pool, &t, "a", 0.0).await.unwrap(),
        "one saga per trip"
    );

    let claimed = store::claim(pool, "b", None, 30.0, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let saga = &claimed[0];
    assert_eq!(
        (saga.version, saga.previous_owner.as_deref()),
        (1, Some("a"))
    );
    assert_eq!(
        (saga.last_seq, saga.last_event, saga.last_attempt),
        (1, StepEvent::Started, 1)
    );
    assert!(
        store::claim(pool, "c", None, 30.0, 10)
            .await
            .unwrap()
            .is_empty(),
        "b's lease holds"
    );

    // a wakes up and records an outcome with the version it read: fenced.
    let log = succeeded_flight(2);

    let stale = Transition {
        saga_id: "fenced".into(),
        version: 0,
        position: Position::Forward(1),
        log,
    };
    assert!(!store::transition(pool, &stale, 30.0).await.unwrap());
    assert_eq!(
        log_len(&db, "fenced").await,
        1,
        "a stale write adds nothing"
    );

    let current = Transition {
        version: 1,
        ..stale
    };
    assert!(store::transition(pool, &current, 30.0).await.unwrap());
    assert_eq!(log_len(&db, "fenced").await, 3);
    let saga = store::find(pool, "fenced").await.unwrap().unwrap();
    assert_eq!(
        (saga.version, saga.cursor, saga.owner.as_deref()),
        (2, 1, Some("b"))
    );
}

#[tokio::test]
async fn a_restarted_process_reclaims_only_its_own_live_sagas() {
    let db = TestDb::new().await;
    let pool = db.pool();
    for (id, owner) in [("mine", "a"), ("theirs", "b")] {
        assert!(store::create(pool, &saga(id), owner, 300.0).await.unwrap());
    }
    assert!(
        store::claim(pool, "a", None, 30.0, 10)
            .await
            .unwrap()
            .is_empty(),
        "leases hold"
    );
    let restarted = store::now(pool).await.unwrap();
    let claimed = store::claim(pool, "a", Some(restarted), 30.0, 10)
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.saga_id.as_str()).collect();
    assert_eq!(ids, ["mine"]);
    assert!(
        store::claim(pool, "a", Some(restarted), 30.0, 10)
            .await
            .unwrap()
            .is_empty(),
        "what it claimed since it restarted is not claimed again"
    );

    assert_eq!(store::release_leases(pool, "b").await.unwrap(), 1);
    let claimed = store::claim(pool, "c", None, 30.0, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.saga_id.as_str()).collect();
    assert_eq!(ids, ["theirs"], "a handed-back lease is free at once");
}

#[tokio::test]
async fn a_batch_applies_each_live_transition_and_fences_the_stale_ones() {
    let db = TestDb::new().await;
    let pool = db.pool();
    for id in ["one", "two", "three"] {
        assert!(store::create(pool, &saga(id), "a", 30.0).await.unwrap());
    }
    let mv = |id: &str, version| {
        let mut log = succeeded_flight(2);
        log[0].detail = json!({ "booking_id": id });
        Transition {
            saga_id: id.into(),
            version,
            position: Position::Forward(1),
            log,
        }
    };
    let applied = store::transitions(pool, &[mv("one", 0), mv("two", 7), mv("three", 0)], 30.0)
        .await
        .unwrap();
    let mut applied: Vec<_> = applied.into_keys().collect();
    applied.sort();
    assert_eq!(applied, [("one".into(), 0), ("three".into(), 0)]);
    assert_eq!(log_len(&db, "one").await, 3);
    assert_eq!(log_len(&db, "two").await, 1, "a fenced move adds nothing");
    // A stale move and the live move of one saga in one batch: the live one
    // applies with its log rows, the stale one's rows are left out.
    let mut stale = mv("one", 0);
    stale.log[0].seq = 4;
    stale.log[1].seq = 5;
    let mut live = mv("one", 1);
    live.log[0].seq = 4;
    live.log[1].seq = 5;
    let applied = store::transitions(pool, &[stale, live], 30.0)
        .await
        .unwrap();
    assert_eq!(applied.into_keys().collect::<Vec<_>>(), [("one".into(), 1)]);
    assert_eq!(log_len(&db, "one").await, 5);

    // A saga taken over gets its outputs back from the log.
    assert_eq!(store::release_leases(pool, "a").await.unwrap(), 3);
    let claimed = store::claim(pool, "b", None, 30.0, 10).await.unwrap();
    let one = claimed.iter().find(|c| c.saga_id == "one").unwrap();
    assert_eq!(
        one.outputs,
        json!({ "ReserveFlight": { "booking_id": "one" } })
    );
    let two = claimed.iter().find(|c| c.saga_id == "two").unwrap();
    assert_eq!(two.outputs, json!({}));
}

#[tokio::test]
async fn one_statement_creates_sagas_and_moves_others() {
    let db = TestDb::new().await;
    let pool = db.pool();
    for id in ["old", "taken"] {
        assert!(store::create(pool, &saga(id), "a", 30.0).await.unwrap());
    }
    let new = |id: &str| saga(id);
    let mv = |version| Transition {
        saga_id: "old".into(),
        version,
        position: Position::Forward(1),
        log: succeeded_flight(2),
    };
    let wrote = store::write(
        pool,
        &[new("fresh"), new("taken")],
        &[mv(0), mv(5)],
        "a",
        30.0,
        None,
    )
    .await
    .unwrap();
    assert_eq!(wrote.created.into_keys().collect::<Vec<_>>(), ["fresh"]);
    assert_eq!(
        wrote.applied.into_keys().collect::<Vec<_>>(),
        [("old".into(), 0)]
    );
    assert_eq!(log_len(&db, "fresh").await, 1);
    assert_eq!(
        log_len(&db, "taken").await,
        1,
        "an existing trip is left as it was"
    );
    assert_eq!(log_len(&db, "old").await, 3);
}

/// A saga's end enqueues one delivery per subscription that wants it, in
/// its own statement; handed off, they come back claimed for this process,
/// otherwise they are due at once for any worker's poll.
#[tokio::test]
async fn a_saga_end_enqueues_its_deliveries_claimed_for_the_hand_off() {
    let db = TestDb::new().await;
    let pool = db.pool();
    for (id, url, types) in [
        ("all", "http://127.0.0.1:9/all", vec![]),
        (
            "ok-only",
            "http://127.0.0.1:9/ok",
            vec!["saga.succeeded".to_owned()],
        ),
    ] {
        store::webhooks::create(pool, id, url, "whsec_AAAA", &types, &[])
            .await
            .unwrap();
    }
    for id in ["handed", "polled", "going-on"] {
        assert!(store::create(pool, &saga(id), "a", 30.0).await.unwrap());
    }
    let end = |id: &str| Transition {
        saga_id: id.into(),
        version: 0,
        position: Position::Ended(orchestrator::saga::SagaStatus::Failed),
        log: vec![LogEntry {
            seq: 2,
            step: "ReserveFlight".into(),
            event: StepEvent::Failed,
            attempt: 1,
            detail: json!({}),
        }],
    };
    let going_on = Transition {
        saga_id: "going-on".into(),
        version: 0,
        position: Position::Forward(1),
        log: succeeded_flight(2),
    };
    let wrote = store::write(
        pool,
        &[],
        &[end("handed"), going_on],
        "a",
        30.0,
        Some(600.0),
    )
    .await
    .unwrap();
    assert_eq!(wrote.applied.len(), 2);
    let handed = &wrote.deliveries["handed"];
    assert_eq!(wrote.deliveries.len(), 1, "only an end is notified");
    assert_eq!(handed.len(), 1, "the failure goes to the one that wants it");
    let due = &handed[0];
    assert_eq!(
        (
            due.url.as_str(),
            due.secret.as_str(),
            due.kind.as_str(),
            due.attempts
        ),
        ("http://127.0.0.1:9/all", "whsec_AAAA", "saga.failed", 1)
    );
    assert!(due.id.starts_with("msg_"), "{}", due.id);
    // Claimed: no poll takes it while the claim lasts.
    assert!(
        store::webhooks::claim_due(pool, "b", 10, 30.0)
            .await
            .unwrap()
            .is_empty()
    );

    let wrote = store::write(pool, &[], &[end("polled")], "a", 30.0, None)
        .await
        .unwrap();
    assert_eq!(wrote.deliveries["polled"][0].attempts, 0);
    let claimed = store::webhooks::claim_due(pool, "b", 10, 30.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "due at once: {claimed:?}");
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].attempts),
        (wrote.deliveries["polled"][0].id.as_str(), 1)
    );
    let listed = store::webhooks::deliveries(pool, "handed").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].status.as_str(), listed[0].attempts),
        ("pending", 1)
    );
    // A claim is given back by its owner only: the hand-off's by a, the
    // poll's by b.
    assert_eq!(store::webhooks::release_claims(pool, "c").await.unwrap(), 0);
    assert_eq!(store::webhooks::release_claims(pool, "a").await.unwrap(), 1);
    let claimed = store::webhooks::claim_due(pool, "b", 10, 30.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].saga_id.as_str(), claimed[0].attempts),
        ("handed", 2)
    );
    assert_eq!(store::webhooks::release_claims(pool, "b").await.unwrap(), 2);

    // Deleting a subscription deletes its deliveries.
    assert!(store::webhooks::delete(pool, "all").await.unwrap());
    assert!(!store::webhooks::delete(pool, "all").await.unwrap());
    for saga_id in ["handed", "polled"] {
        let left = store::webhooks::deliveries(pool, saga_id).await.unwrap();
        assert!(left.is_empty(), "{saga_id}: {left:?}");
    }
}

/// A delivery enqueued by a statement that began before its subscription
/// was deleted is failed by the next claim, not sent, and not claimed again.
#[tokio::test]
async fn a_delivery_whose_subscription_is_gone_is_failed_not_sent() {
    let db = TestDb::new().await;
    let pool = db.pool();
    store::webhooks::create(pool, "gone", "http://127.0.0.1:9/", "whsec_AAAA", &[], &[])
        .await
        .unwrap();
    assert!(
        store::create(pool, &saga("orphan"), "a", 30.0)
            .await
            .unwrap()
    );
    let end = Transition {
        saga_id: "orphan".into(),
        version: 0,
        position: Position::Ended(orchestrator::saga::SagaStatus::Failed),
        log: vec![],
    };
    store::write(pool, &[], &[end], "a", 30.0, None)
        .await
        .unwrap();
    // The subscription alone, as a racing delete leaves it.
    sqlx::query("DELETE FROM orchestrator.webhooks WHERE id = 'gone'")
        .execute(pool)
        .await
        .unwrap();
    for _ in 0..2 {
        let claimed = store::webhooks::claim_due(pool, "b", 10, 30.0)
            .await
            .unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
    }
    let left = store::webhooks::deliveries(pool, "orphan").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].status.as_str(), left[0].last_error.as_deref()),
        ("failed", Some("its subscription was deleted"))
    );
}

#[tokio::test]
async fn a_batch_of_transitions_finds_its_sagas_by_key_before_any_statistics() {
    let db = TestDb::new().await;
    // The orchestrator's own connections, on tables never analyzed.
    let pool = orchestrator::connect(db.url(), Default::default())
        .await
        .unwrap();
    let ids: Vec<String> = (0..2000).map(|i| format!("trip-{i}")).collect();
    let new: Vec<_> = ids.iter().map(|id| saga(id)).collect();
    let created = store::write(&pool, &new, &[] as &[Transition], "a", 30.0, None)
        .await
        .unwrap()
        .created;
    assert_eq!(created.len(), ids.len());
    let moves: Vec<_> = ids[..200]
        .iter()
        .map(|id| Transition {
            saga_id: id.clone(),
            version: 0,
            position: Position::Forward(1),
            log: succeeded_flight(2),
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    let applied = store::transitions(&mut *tx, &moves, 30.0).await.unwrap();
    assert_eq!(applied.len(), moves.len());
    let (scans, fetched): (i64, i64) = sqlx::query_as(
        "SELECT seq_scan, idx_tup_fetch FROM pg_stat_xact_user_tables
         WHERE schemaname = 'orchestrator' AND relname = 'sagas'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        scans, 0,
        "a batch of transitions scanned orchestrator.sagas"
    );
    // One key lookup per move, not a walk over a whole index.
    assert!(
        fetched <= moves.len() as i64,
        "{fetched} saga rows fetched for {} moves",
        moves.len()
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_write_the_database_refuses_fails_alone_in_its_batch() {
    let db = TestDb::new().await;
    let pool = db.pool();
    for id in ["good", "bad"] {
        assert!(store::create(pool, &saga(id), "a", 30.0).await.unwrap());
    }
    let writer = orchestrator::saga::writer::Writer::start(
        pool.clone(),
        "a".into(),
        30.0,
        25.0,
        Duration::from_secs(10),
        Default::default(),
    );
    let good = Transition {
        saga_id: "good".into(),
        version: 0,
        position: Position::Forward(1),
        log: succeeded_flight(2),
    };
    // Two log rows with one seq: saga_log's key refuses the statement.
    let mut log = succeeded_flight(2);
    log[1].seq = 2;
    let bad = Transition {
        saga_id: "bad".into(),
        version: 0,
        position: Position::Forward(1),
        log,
    };
    // Both are queued before the writer runs (one thread): one batch.
    let (good, bad) = tokio::join!(
        writer.write(std::sync::Arc::new(good)),
        writer.write(std::sync::Arc::new(bad))
    );
    assert!(matches!(good, Ok(Some(_))), "{good:?}");
    assert!(matches!(&bad, Err(err) if !err.outage), "{bad:?}");
    assert_eq!(log_len(&db, "good").await, 3);
    assert_eq!(log_len(&db, "bad").await, 1);
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_found_by_its_first_log_row() {
    let db = TestDb::new().await;
    let pool = db.pool();
    assert!(store::create(pool, &saga("lost"), "a", 30.0).await.unwrap());
    let mut log = succeeded_flight(2);
    log[0].detail = json!({ "booking_id": "b1" });
    let made = Transition {
        saga_id: "lost".into(),
        version: 0,
        position: Position::Forward(1),
        log,
    };
    assert_eq!(store::was_written(pool, &made).await.unwrap(), None);
    assert!(store::transition(pool, &made, 30.0).await.unwrap());
    // Its retry is fenced by the write itself, and the log row shows it.
    assert!(!store::transition(pool, &made, 30.0).await.unwrap());
    assert!(store::was_written(pool, &made).await.unwrap().is_some());
    // Another mover's row at the same place is not this write.
    let mut other = made.clone();
    other.log[0].detail = json!({ "booking_id": "b2" });
    assert_eq!(store::was_written(pool, &other).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_database_restart_the_writer_takes_a_new_connection() {
    let mut pg = tokio::task::spawn_blocking(|| {
        pglocal::PrivatePostgres::start(pglocal::Durability::Throwaway)
    })
    .await
    .unwrap()
    .unwrap();
    let pool = orchestrator::connect(pg.url(), Default::default())
        .await
        .unwrap();
    let writer = orchestrator::saga::writer::Writer::start(
        pool.clone(),
        "a".into(),
        30.0,
        25.0,
        Duration::from_secs(10),
        Default::default(),
    );
    let new = |id: &str| saga(id);
    assert!(matches!(writer.create(new("before")).await, Ok(Some(_))));

    // The crash cuts the connection the writer holds, and those idle in the
    // pool: each fails one write as an outage, which the driver retries, and
    // is let go. A writer that kept its cut connection would fail forever.
    pg = tokio::task::spawn_blocking(move || pg.restart_immediate().map(|()| pg))
        .await
        .unwrap()
        .unwrap();
    let mut attempts = 0;
    let made = loop {
        attempts += 1;
        let write = tokio::time::timeout(Duration::from_secs(20), writer.create(new("after")));
        match write.await.expect("a write hung") {
            Err(err) if err.outage && attempts <= 11 => continue,
            other => break other,
        }
    };
    assert!(
        matches!(made, Ok(Some(_))),
        "{made:?} after {attempts} attempts"
    );
    assert!(attempts > 1, "the cut connection failed a write");
    let count = sqlx::query_scalar("SELECT count(*) FROM orchestrator.sagas").fetch_one(&pool);
    let sagas: i64 = tokio::time::timeout(Duration::from_secs(20), count)
        .await
        .expect("the count hung")
        .unwrap();
    assert_eq!(sagas, 2, "the saga acknowledged before the crash is there");
    // The writer gives its connection back when its queue closes.
    let task = writer.take_task().unwrap();
    drop(writer);
    task.await.unwrap();
    pool.close().await;
    pg.stop();
}

#[tokio::test]
async fn a_write_the_database_never_answers_fails_as_an_outage_and_the_next_goes_through() {
    let db = TestDb::new().await;
    let (proxy, pool) = through_a_silent_proxy(&db).await;
    let timeout = Duration::from_millis(500);
    let writer = orchestrator::saga::writer::Writer::start(
        pool.clone(),
        "a".into(),
        30.0,
        25.0,
        timeout,
        Default::default(),
    );
    let new = |id: &str| saga(id);
    assert!(matches!(writer.create(new("before")).await, Ok(Some(_))));

    // Every connection open now, the writer's among them, stops answering
    // without closing. Without a timeout of its own the writer would wait
    // for ever, and every saga with it.
    let closed_before = proxy.closed();
    let silenced = proxy.silence();
    let unanswered = tokio::time::timeout(Duration::from_secs(10), writer.create(new("during")))
        .await
        .expect("the writer waited for ever on a connection that does not answer");
    assert!(
        matches!(&unanswered, Err(err) if err.outage),
        "{unanswered:?}"
    );
    // The silent connection is closed, not handed back to the pool (where
    // sqlx's ping on return would wait on it for ever).
    closed(&proxy, closed_before).await;
    // A driver retries an outage. The pool may hand the writer another of
    // the silent connections, which fails the same way; then a new one.
    let mut attempts = 0;
    let after = loop {
        attempts += 1;
        let write = tokio::time::timeout(Duration::from_secs(10), writer.create(new("after")));
        match write.await.expect("a write hung") {
            Err(err) if err.outage && attempts <= silenced => continue,
            other => break other,
        }
    };
    assert!(
        matches!(after, Ok(Some(_))),
        "{after:?} after {attempts} attempts"
    );
    let sagas: Vec<String> =
        sqlx::query_scalar("SELECT saga_id FROM orchestrator.sagas ORDER BY saga_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        sagas,
        ["after", "before"],
        "the unanswered write never reached the database"
    );
    let task = writer.take_task().unwrap();
    drop(writer);
    task.await.unwrap();
}

/// A pool whose connections go through a proxy that can silence them.
async fn through_a_silent_proxy(db: &TestDb) -> (testkit::silent::SilentProxy, sqlx::PgPool) {
    let (proxy, through) = testkit::silent::SilentProxy::before(db.url())
        .await
        .unwrap();
    // A silent idle connection holds an acquire for this long (its ping).
    let settings = common::db::PoolConfig {
        acquire_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let pool = orchestrator::connect(&through, settings).await.unwrap();
    (proxy, pool)
}

#[tokio::test]
async fn a_query_the_database_never_answers_is_given_up_and_its_connection_closed() {
    let db = TestDb::new().await;
    let (proxy, pool) = through_a_silent_proxy(&db).await;
    let proxy = std::sync::Arc::new(proxy);
    let limit = Duration::from_millis(500);
    // The connection falls silent once it has been handed out, before the
    // query goes: without a limit the query would wait for ever.
    let silenced = std::sync::Arc::clone(&proxy);
    let closed_before = proxy.closed();
    let unanswered = tokio::time::timeout(
        Duration::from_secs(10),
        common::db::bounded(&pool, limit, async move |conn| {
            silenced.silence();
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(conn)
                .await
        }),
    )
    .await
    .expect("the query waited for ever on a connection that does not answer");
    assert!(
        matches!(&unanswered, Err(sqlx::Error::Io(err)) if err.kind() == std::io::ErrorKind::TimedOut),
        "{unanswered:?}"
    );
    assert!(orchestrator::saga::engine::is_outage(
        &unanswered.unwrap_err()
    ));
    closed(&proxy, closed_before).await;
    // A caller retries an outage. The pool may hand out another of the
    // silent connections, whose ping before use runs out of the pool's
    // acquire timeout (and closes it); then a new one.
    let mut attempts = 0;
    let answered = loop {
        attempts += 1;
        let query = common::db::bounded(&pool, Duration::from_secs(10), async |conn| {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(conn)
                .await
        });
        match tokio::time::timeout(Duration::from_secs(20), query)
            .await
            .expect("a query hung")
        {
            Err(err) if orchestrator::saga::engine::is_outage(&err) && attempts <= 10 => continue,
            other => break other,
        }
    };
    assert_eq!(answered.unwrap(), 1, "after {attempts} attempts");
}

/// Awaits the client side closing one more of the proxy's connections than
/// `before`.
async fn closed(proxy: &testkit::silent::SilentProxy, before: usize) {
    testkit::eventually(
        "the silent connection is closed",
        Duration::from_secs(10),
        || async { (proxy.closed() > before).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_read_the_database_never_answers_is_a_503_and_the_next_goes_through() {
    use orchestrator::saga::engine::{Engine, EngineConfig};

    let db = TestDb::new().await;
    assert!(
        store::create(db.pool(), &saga("read"), "a", 30.0)
            .await
            .unwrap()
    );
    let (proxy, pool) = through_a_silent_proxy(&db).await;
    // Reads are given up after a third of the lease: 2 s.
    let config = EngineConfig {
        owner: "a".into(),
        lease: Duration::from_secs(6),
        retry: orchestrator::retry::RetryConfig::default(),
        limits: Default::default(),
        webhook_claim: Duration::from_secs(25),
    };
    let nobody = |name: &str| orchestrator::participants::BaseUrl {
        setting: name.into(),
        url: "http://127.0.0.1:9".into(),
        key: None,
    };
    let urls = ["flights", "cars", "payments"]
        .map(|name| (name.to_owned(), nobody(name)))
        .into();
    let participants = orchestrator::participants::Participants::new(
        &urls,
        &config.retry,
        1,
        1024 * 1024,
        Vec::new(),
    )
    .unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let engine = Engine::new(pool.clone(), participants, &config, token);
    let travel = orchestrator::definition::Document::parse(
        orchestrator::definition::TRAVEL_YAML,
        orchestrator::definition::Format::Yaml,
    )
    .unwrap();
    engine.register(travel).await.unwrap();
    let server = testkit::TestServer::start(orchestrator::app(orchestrator::AppState {
        engine: std::sync::Arc::clone(&engine),
        pool: pool.clone(),
        trip_wait: Duration::ZERO,
        default_deadline_secs: None,
    }))
    .await;
    let url = format!("{}/trips/read", server.url);
    let get = || async {
        let answer = tokio::time::timeout(Duration::from_secs(20), reqwest::get(&url))
            .await
            .expect("the read hung")
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json::<serde_json::Value>().await.unwrap())
    };
    let all_idle = || {
        testkit::eventually(
            "the read's connection back in the pool",
            Duration::from_secs(10),
            || async { (pool.num_idle() == pool.size() as usize).then_some(()) },
        )
    };
    assert_eq!(get().await.0, 200);
    all_idle().await;

    // The pool's connections stop answering without closing: the next read
    // is given up as an outage, answered 503, and its connection closed.
    let closed_before = proxy.closed();
    let silenced = proxy.silence();
    let (status, body) = get().await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    closed(&proxy, closed_before).await;
    // A caller retries; it may meet another silent connection first.
    let mut attempts = 0;
    let (status, body) = loop {
        attempts += 1;
        match get().await {
            (503, _) if attempts <= silenced + 1 => continue,
            other => break other,
        }
    };
    assert_eq!(status, 200, "{body} after {attempts} attempts");
    assert_eq!(body["trip_id"], "read");

    // The readiness probe is bounded the same way (not by the 10 s a `Db`
    // allows unless told): silenced again, it answers 503 within 5 s.
    all_idle().await;
    let closed_before = proxy.closed();
    proxy.silence();
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        reqwest::get(format!("{}/readyz", server.url)),
    )
    .await
    .expect("the probe took the 10 s of a Db, not the lease's third")
    .unwrap();
    assert_eq!(probe.status(), 503);
    closed(&proxy, closed_before).await;
    engine.stop(false).await;
}

/// `orchestrator validate`, `dry-run` and `schema`, as a user runs them:
/// no database, no server.
mod cli {
    use std::process::Command;

    const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
    const TRAVEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas/travel.yaml");

    fn run(args: &[&str]) -> (i32, String) {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run the orchestrator binary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    #[test]
    fn validate_exits_1_on_errors_and_names_each() {
        let (code, out) = run(&["validate", TRAVEL]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("travel.yaml: valid"), "{out}");

        let dir = std::env::temp_dir().join(format!("cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.yaml");
        let text = std::fs::read_to_string(TRAVEL).unwrap().replace(
            "steps.ReserveFlight.booking_id }}'\n        car",
            "steps.ConfirmFlight.booking_id }}'\n        car",
        );
        std::fs::write(&bad, text).unwrap();
        let (code, out) = run(&["validate", TRAVEL, bad.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("bad.yaml: error later_step at steps[2].call.body.flight_booking_id"),
            "{out}"
        );
        let (code, out) = run(&["validate", "/nonexistent.yaml"]);
        assert_eq!(code, 1, "{out}");
    }

    #[test]
    fn schema_prints_the_published_json_schema() {
        let (code, out) = run(&["schema"]);
        assert_eq!(code, 0, "{out}");
        let printed: serde_json::Value = serde_json::from_str(&out).expect(&out);
        let published = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/definition.schema.json"
        );
        let published: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(published).unwrap()).unwrap();
        assert_eq!(printed, published);
    }

    #[test]
    fn dry_run_prints_the_calls_in_order() {
        let (code, out) = run(&[
            "dry-run",
            TRAVEL,
            "--id",
            "trip-7",
            "--input",
            r#"{"run_type": "failPayment"}"#,
            "--outcome",
            "ProcessPayment=422",
        ]);
        assert_eq!(code, 0, "{out}");
        let run: serde_json::Value = serde_json::from_str(&out).expect(&out);
        let steps: Vec<&str> = run["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["step"].as_str().unwrap())
            .collect();
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
        assert_eq!(run["status"], "failed");
        assert_eq!(
            run["calls"][3]["url"],
            "http://payments/payments/trip-7/refund"
        );
    }
}

#[tokio::test]
async fn a_definition_file_with_errors_stops_the_start_with_its_diagnostics() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("bad-sagas-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        orchestrator::definition::TRAVEL_YAML.replace("participant: cars", "participant: boats");
    std::fs::write(dir.join("travel.yaml"), text).unwrap();
    let nobody = "http://127.0.0.1:9";
    let mut config = orchestrator::Config::new(db.url(), nobody, nobody, nobody);
    config.sagas_dir = dir;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = orchestrator::run(config, listener, std::future::pending())
        .await
        .expect_err("the start stops");
    let message = format!("{err:#}");
    assert!(message.contains("travel.yaml has errors"), "{message}");
    assert!(
        message.contains("unknown_participant at steps[1].call.participant"),
        "{message}"
    );
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orchestrator.definitions")
            .fetch_one(db.pool())
            .await
            .unwrap(),
        0
    );
}
