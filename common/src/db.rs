//! The database connection every service makes: a pool whose connections
//! work inside the service's own schema, and the migrations of that schema.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Pool settings a service chooses.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Server settings for every connection of the pool (`SET name = value`
    /// at connect time, so they cost nothing per query).
    pub settings: &'static [(&'static str, &'static str)],
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            settings: &[],
        }
    }
}

/// Connects to `url` with `search_path` set to `schema`, waiting up to about
/// 30 s for PostgreSQL to come up, creates the schema if needed and applies
/// `migrator` to it. The migration history lives in that schema, so services
/// sharing one database keep separate histories.
pub async fn connect_and_migrate(
    url: &str,
    schema: &'static str,
    migrator: Migrator,
    pool: PoolConfig,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .options([("search_path", schema)])
        .options(pool.settings.iter().copied());
    let pool_options = PgPoolOptions::new()
        .max_connections(pool.max_connections)
        .acquire_timeout(pool.acquire_timeout)
        // No round trip to test each connection as it leaves the pool: a
        // broken one fails its query, which every caller treats as
        // transient (the orchestrator retries the write, a participant
        // answers 500 and is called again).
        .test_before_acquire(false);
    let pool = (|| pool_options.clone().connect_with(options.clone()))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(20),
        )
        .notify(|err, delay| {
            tracing::warn!(%err, ?delay, "database not reachable yet, retrying");
        })
        .await
        .context("cannot connect to DATABASE_URL")?;
    let mut migrator = migrator;
    migrator.create_schema(schema);
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("cannot migrate schema {schema}"))?;
    Ok(pool)
}
