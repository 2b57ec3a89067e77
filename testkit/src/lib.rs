//! Test support shared by every crate's tests.
//!
//! - [`TestDb`]: a fresh database per test, with the four schemas migrated,
//!   on the server named by `DATABASE_URL` or, when it is unset, on a private
//!   throwaway PostgreSQL started once per test binary.
//! - [`TestServer`]: a router served on 127.0.0.1, port 0.
//! - [`invariant`]: the design's consistency invariant, checked over every
//!   trip of a database.
//! - [`eventually`]: awaiting a condition, instead of sleeping.
//! - [`silent::SilentProxy`]: a TCP proxy whose connections can fall silent.

use std::future::Future;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio_util::sync::{CancellationToken, DropGuard};

pub mod contract;
pub mod invariant;
pub mod procs;
pub mod silent;

/// The server tests create their databases on.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    static PRIVATE: OnceLock<pglocal::PrivatePostgres> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let pg = PRIVATE.get_or_init(|| {
                pglocal::PrivatePostgres::start(pglocal::Durability::Throwaway)
                    .expect("DATABASE_URL is unset and no private PostgreSQL could be started")
            });
            pg.url().to_owned()
        }
    })
}

/// A database of its own for one test, dropped when the test ends.
#[derive(Debug)]
pub struct TestDb {
    url: String,
    name: String,
    pool: PgPool,
}

impl TestDb {
    /// Creates a new database and migrates all four schemas into it, the way
    /// the services do at start-up.
    pub async fn new() -> Self {
        Self::create().await.expect("cannot create a test database")
    }

    async fn create() -> anyhow::Result<Self> {
        let server = server_url();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnectOptions::from_str(server)?.connect().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let mut url = url::Url::parse(server).context("DATABASE_URL is not a URL")?;
        url.set_path(&name);
        let url = url.to_string();
        for (schema, migrator) in [
            ("orchestrator", sqlx::migrate!("../migrations/orchestrator")),
            ("flights", sqlx::migrate!("../migrations/flights")),
            ("cars", sqlx::migrate!("../migrations/cars")),
            ("payments", sqlx::migrate!("../migrations/payments")),
        ] {
            let pool =
                common::db::connect_and_migrate(&url, schema, migrator, Default::default()).await?;
            pool.close().await;
        }
        let pool = PgPool::connect(&url).await?;
        Ok(Self { url, name, pool })
    }

    /// The database's URL, as a service's `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on the database, with no schema on its search path: queries
    /// name their schema.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pool of its own on the database, for a service under test: one
    /// whose connections the service keeps (`common::db::Db`) must not be
    /// the pool the test reads with.
    pub async fn new_pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("cannot connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: drop the database from a thread of its own
        // (FORCE ends the connections of the test's pool).
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut admin = PgConnectOptions::from_str(server_url())?.connect().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("testkit: could not drop test database {}", self.name);
        }
    }
}

/// A router served on 127.0.0.1 with port 0; stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub url: String,
    _stop: DropGuard,
}

impl TestServer {
    /// Serves `router` with the services' standard middleware.
    pub async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let metrics = common::metrics::Metrics::new(Default::default());
        let router = common::server::with_middleware(router, &metrics, Duration::from_secs(30));
        tokio::spawn(async move {
            let limits = common::server::Limits::default();
            let stopped = async move { stopped.cancelled().await };
            common::server::serve(listener, router, limits, stopped).await
        });
        Self {
            url,
            _stop: stop.drop_guard(),
        }
    }
}

/// Awaits `check` returning `Some`, trying every 20 ms for up to `within`;
/// panics naming `what` when it does not happen.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
