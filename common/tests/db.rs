//! The services' connections ([`common::db`]) on a real PostgreSQL: a
//! crash under an idle pool, and what a `Db` keeps and gives back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::db::{Db, PoolConfig};
use sqlx::Connection;

#[tokio::test]
async fn after_a_restart_every_query_gets_a_live_connection() {
    let (mut pg, db) = private_db(4).await;
    let pool = db.pool().clone();
    // Four connections open and idle in the pool.
    let slow = || sqlx::query("SELECT pg_sleep(0.05)").execute(&pool);
    let (a, b, c, d) = tokio::join!(slow(), slow(), slow(), slow());
    for done in [a, b, c, d] {
        done.unwrap();
    }
    // They go back to the pool in the background, each after a ping.
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        while pool.num_idle() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    back.await
        .expect("the connections never went back to the pool");
    // Every one of them is cut by the crash. The pool hands out no broken
    // connection: each of them has been idle across the restart for longer
    // than the window, so it is pinged and replaced.
    pg = crash(pg, tokio::time::Instant::now()).await;
    for _ in 0..8 {
        let one: i32 = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query_scalar("SELECT 1").fetch_one(&pool),
        )
        .await
        .expect("the query hung")
        .expect("a query after the restart failed");
        assert_eq!(one, 1);
    }
    pool.close().await;
    pg.stop();
}

/// A private PostgreSQL.
async fn private_pg() -> pglocal::PrivatePostgres {
    tokio::task::spawn_blocking(|| pglocal::PrivatePostgres::start(pglocal::Durability::Throwaway))
        .await
        .unwrap()
        .unwrap()
}

/// A `Db` on `pg` whose pool has `options`.
async fn db_with(pg: &pglocal::PrivatePostgres, options: sqlx::postgres::PgPoolOptions) -> Db {
    Db::new(options.connect(pg.url()).await.unwrap())
}

/// Runs `n` uses of `db` at once, so that `n` connections are open and, once
/// they end, kept on its stack.
async fn use_at_once(db: &Db, n: usize) {
    let mut uses = tokio::task::JoinSet::new();
    for _ in 0..n {
        let db = db.clone();
        uses.spawn(async move {
            db.run(async |conn| {
                sqlx::query("SELECT pg_sleep(0.05)")
                    .execute(conn)
                    .await
                    .map(drop)
            })
            .await
        });
    }
    for done in uses.join_all().await {
        done.unwrap();
    }
}

/// A private PostgreSQL and a `Db` of `max` connections on it.
async fn private_db(max: u32) -> (pglocal::PrivatePostgres, Db) {
    let pg = private_pg().await;
    let pool = common::db::connect(
        pg.url(),
        "public",
        PoolConfig {
            max_connections: max,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (pg, Db::new(pool))
}

async fn backend(db: &Db) -> i32 {
    db.run(async |conn| {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_db_keeps_the_connection_of_a_finished_use_and_gives_back_one_cut_short() {
    let (pg, db) = private_db(1).await;
    // A pool of one connection that counts the connections handed back to
    // it: a second use waits for the first one's connection, so it would
    // count one had it gone back through sqlx.
    let returned = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&returned);
    let counting = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_release(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(true) })
        })
        .connect(pg.url())
        .await
        .unwrap();
    let kept = Db::new(counting);
    let first = backend(&kept).await;
    assert_eq!(backend(&kept).await, first);
    assert_eq!(
        returned.load(Ordering::SeqCst),
        0,
        "a finished use's connection went back to the pool"
    );

    db.run(async |conn| {
        sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
            .execute(conn)
            .await
    })
    .await
    .unwrap();
    // A use dropped while its transaction holds a row lock.
    let held = tokio::sync::Notify::new();
    let cut = db.run(async |conn| {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT id FROM t WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        held.notify_one();
        std::future::pending::<()>().await;
        tx.commit().await
    });
    tokio::select! {
        _ = cut => unreachable!("the use never ends"),
        () = held.notified() => {}
    }
    // Its connection went back through sqlx, which rolled the transaction
    // back: the row can be locked again without waiting. (Kept as it was, the
    // connection would hold the lock until its next use.)
    let mut other = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    testkit_eventually("the row lock to be released", async || {
        lockable(&mut other).await
    })
    .await;
    // The Db's next use takes a live connection.
    backend(&db).await;

    // A use that answers Ok but dropped its transaction (its ROLLBACK only
    // queued): the connection goes back through sqlx, which sends it.
    db.run(async |conn| {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT id FROM t WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        drop(tx);
        Ok::<_, sqlx::Error>(())
    })
    .await
    .unwrap();
    testkit_eventually(
        "the dropped transaction's lock to be released",
        async || lockable(&mut other).await,
    )
    .await;
    pg.stop();
}

#[tokio::test]
async fn a_db_lets_a_connection_go_once_past_the_pools_max_lifetime() {
    let pg = private_pg().await;
    let lifetime = Duration::from_millis(300);
    let options = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(lifetime);
    let db = db_with(&pg, options).await;
    let first = backend(&db).await;
    assert_eq!(backend(&db).await, first, "kept for the next use");
    // What is tested is time passing: nothing to await instead.
    tokio::time::sleep(lifetime).await;
    // The use runs on it, then it goes back to sqlx, which closes it (kept
    // on the stack, it would live as long as the service).
    assert_eq!(backend(&db).await, first);
    assert_ne!(
        backend(&db).await,
        first,
        "a connection past max_lifetime was kept"
    );
    pg.stop();
}

#[tokio::test]
async fn a_db_closes_a_connection_idle_on_its_stack_past_the_pools_idle_timeout() {
    let pg = private_pg().await;
    let idle = Duration::from_millis(300);
    let options = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .idle_timeout(idle);
    let db = db_with(&pg, options).await;
    use_at_once(&db, 2).await;
    assert_eq!(db.pool().size(), 2);
    // What is tested is time passing: nothing to await instead.
    tokio::time::sleep(idle).await;
    // One use takes the connection on top; as it ends, the one at the
    // bottom, idle past the timeout, is closed (kept on the stack, it would
    // stay open as long as the service).
    let kept = backend(&db).await;
    testkit_eventually("the idle connection to close", async || {
        db.pool().size() == 1
    })
    .await;
    assert_eq!(backend(&db).await, kept, "the connection in use was closed");
    pg.stop();
}

#[tokio::test]
async fn a_db_hands_out_no_connection_broken_by_a_restart() {
    let (mut pg, db) = private_db(4).await;
    use_at_once(&db, 4).await;
    assert_eq!(db.pool().size(), 4);
    // Each is cut by the crash and has been idle across it for longer than
    // the window, so it is pinged, found broken and replaced.
    pg = crash(pg, tokio::time::Instant::now()).await;
    for _ in 0..8 {
        tokio::time::timeout(Duration::from_secs(10), backend(&db))
            .await
            .expect("a use hung");
    }
    pg.stop();
}

/// Whether `other` can lock the row of `t` without waiting.
async fn lockable(other: &mut sqlx::PgConnection) -> bool {
    sqlx::raw_sql("SET lock_timeout = '10ms'; SELECT id FROM t WHERE id = 1 FOR UPDATE")
        .execute(other)
        .await
        .is_ok()
}

/// Restarts `pg` at once (every open connection is cut), then waits until
/// connections idle since `idle_since` are past the ping window.
async fn crash(
    mut pg: pglocal::PrivatePostgres,
    idle_since: tokio::time::Instant,
) -> pglocal::PrivatePostgres {
    pg = tokio::task::spawn_blocking(move || pg.restart_immediate().map(|()| pg))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep_until(idle_since + common::db::PING_IF_IDLE_FOR).await;
    pg
}

/// Awaits `check` answering `true`, for up to 10 s (`testkit::eventually`
/// is out of reach: testkit depends on this crate).
async fn testkit_eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
