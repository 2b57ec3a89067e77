//! The services' connection pool against a real PostgreSQL crash.

use std::time::Duration;

use common::db::PoolConfig;

#[tokio::test]
async fn after_a_restart_every_query_gets_a_live_connection() {
    let mut pg = tokio::task::spawn_blocking(|| {
        pglocal::PrivatePostgres::start(pglocal::Durability::Throwaway)
    })
    .await
    .unwrap()
    .unwrap();
    let pool = common::db::connect(
        pg.url(),
        "public",
        PoolConfig {
            max_connections: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
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
    let idle_since = tokio::time::Instant::now();

    // Every one of them is cut by the crash.
    pg = tokio::task::spawn_blocking(move || pg.restart_immediate().map(|()| pg))
        .await
        .unwrap()
        .unwrap();

    // The pool hands out no broken connection: each of them has been idle
    // across the restart for longer than the window, so it is pinged and
    // replaced.
    tokio::time::sleep_until(idle_since + common::db::PING_IF_IDLE_FOR).await;
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
