//! The database connection every service makes: a pool whose connections
//! work inside the service's own schema, and the migrations of that schema.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Semaphore;

/// A pooled connection idle for longer is pinged before it is handed out
/// (HikariCP's `aliveBypassWindowMs`, shorter): one used more recently
/// answered then. A restart of PostgreSQL shorter than this can leave
/// connections that fail their next query, once each (and are closed);
/// every caller treats that as transient.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(100);

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
    let pool = connect(url, schema, pool).await?;
    if crate::roles::is_superuser(&pool).await? {
        tracing::warn!(
            "connected to the database as a superuser: give this service a role of its own (`provision`, docs/security.md)"
        );
    }
    let mut migrator = migrator;
    // A role of its own owns its schema, made for it by `provision`, and
    // may not create schemas: PostgreSQL checks that right before it looks
    // whether the schema exists.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&pool)
            .await?;
    if !exists {
        migrator.create_schema(schema);
    }
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("cannot migrate schema {schema}"))?;
    Ok(pool)
}

/// Connects to `url` with `search_path` set to `schema`, waiting up to about
/// 30 s for PostgreSQL to come up.
pub async fn connect(url: &str, schema: &'static str, pool: PoolConfig) -> anyhow::Result<PgPool> {
    let options = options(url)?
        .options([("search_path", schema)])
        .options(pool.settings.iter().copied());
    let pool_options = PgPoolOptions::new()
        .max_connections(pool.max_connections)
        .acquire_timeout(pool.acquire_timeout)
        // sqlx pings every connection as it leaves the pool (and again as
        // it comes back): one more round trip per query. Under load a
        // connection has been idle for microseconds and has just passed the
        // ping on its way back, so only one idle for longer is pinged: after
        // a PostgreSQL restart those are the ones left broken.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        });
    (|| pool_options.clone().connect_with(options.clone()))
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
        .context("cannot connect to DATABASE_URL")
}

/// The connection settings of `url`. Its `sslmode` (or `PGSSLMODE`) is
/// honoured; when neither says, a server on this machine (a loopback
/// address, a Unix socket) is spoken to without TLS, and any other as
/// libpq does (`prefer`: TLS if the server offers it). TLS to a server on
/// the same machine protects nothing and costs every query: measured,
/// about half the throughput on the benchmark (docs/benchmarks.md).
pub fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options =
        PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let said = url::Url::parse(url)
        .map(|u| u.query_pairs().any(|(k, _)| k == "sslmode"))
        .unwrap_or(true)
        || std::env::var_os("PGSSLMODE").is_some();
    let host = options.get_host();
    let local = options.get_socket().is_some()
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok(if !said && local {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        options
    })
}

/// Runs `query` on a connection from `pool` and gives up after `limit`, as
/// an I/O error (`TimedOut`, an outage to every caller): sqlx has no timeout
/// for a query, and a connection whose server stopped answering without
/// closing it would hold the caller for ever. See [`bounded_on`].
pub async fn bounded<T>(
    pool: &PgPool,
    limit: Duration,
    query: impl AsyncFnOnce(&mut sqlx::PgConnection) -> sqlx::Result<T>,
) -> sqlx::Result<T> {
    bounded_on(pool, &mut None, limit, query).await
}

/// [`bounded`] on `held`, a connection kept from one call to the next (one
/// is taken from `pool` when there is none). A connection that has not
/// answered within `limit` is closed, not handed back, and `held` left
/// empty: sqlx pings a connection on its way back to the pool, and would
/// wait on that as long.
pub async fn bounded_on<T>(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    limit: Duration,
    query: impl AsyncFnOnce(&mut sqlx::PgConnection) -> sqlx::Result<T>,
) -> sqlx::Result<T> {
    let answered = tokio::time::timeout(limit, async {
        let conn = match &mut *held {
            Some(conn) => conn,
            empty => empty.insert(pool.acquire().await?),
        };
        query(conn).await
    })
    .await;
    answered.unwrap_or_else(|_| {
        Err(match held.take() {
            Some(conn) => {
                drop(conn.detach());
                unanswered(limit)
            }
            None => timed_out(format!(
                "no database connection could be had within {limit:?}"
            )),
        })
    })
}

/// The error of a query left unanswered for `limit`, whose connection was
/// closed: a `TimedOut` I/O error, an outage ([`is_outage`]).
fn unanswered(limit: Duration) -> sqlx::Error {
    timed_out(format!(
        "the database did not answer within {limit:?}; the connection is closed"
    ))
}

fn timed_out(message: String) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

/// A participant's connections: a pool whose connections come back without
/// a round trip.
///
/// sqlx pings every connection as it goes back to its pool (to flush the
/// ROLLBACK of a transaction whose future was dropped, and to find broken
/// connections): one more round trip per use, and a participant call is
/// one statement, so a fifth of its cost. A `Db` keeps the connection of
/// every use that ran to the end on a stack of its own and hands it out
/// again as it is. A use cut short (its future dropped, or an error) gives
/// its connection back to sqlx, which pings it, rolls back what it left
/// open, and closes it if it is broken. A connection idle on the stack for
/// longer than [`PING_IF_IDLE_FOR`] is pinged before it is used again, so
/// one left broken by a PostgreSQL restart is closed, not handed out. One
/// older than the pool's `max_lifetime` goes back to sqlx after its use,
/// which closes it. One left on the stack for longer than the pool's
/// `idle_timeout` is closed at the next use that ends: when the load falls,
/// the connections it no longer needs sink to the bottom of the stack and
/// are closed there (if no use comes at all, they stay open).
///
/// Uses wait their turn on a semaphore of the pool's size, first come first
/// served, for up to the pool's acquire timeout; a use that has its turn
/// finds a connection on the stack or in the pool. Everything of the
/// service goes through the `Db`: a connection on its stack is in use as
/// far as the sqlx pool knows, so a caller of the pool itself could wait
/// for one that never comes back.
///
/// A use the database has not answered within the query timeout
/// ([`Db::with_query_timeout`], 10 s unless set) is given up: its
/// connection is closed, not handed back, and it fails as a `TimedOut` I/O
/// error, an outage ([`is_outage`]). sqlx has no timeout of its own for a
/// query, and a connection whose server stopped answering without closing
/// would hold the call, its turn and its connection until TCP gave up.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    turns: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<Idle>>>,
    query_timeout: Duration,
}

/// How long a use of a [`Db`] may go unanswered, unless set.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Idle {
    conn: PoolConnection<Postgres>,
    since: Instant,
    /// When this `Db` first took it from the pool: it is at least this old.
    taken: Instant,
}

impl Db {
    /// Hands out the connections of `pool`.
    pub fn new(pool: PgPool) -> Self {
        let size = usize::try_from(pool.options().get_max_connections()).unwrap_or(1);
        Self {
            pool,
            turns: Arc::new(Semaphore::new(size.max(1))),
            idle: Arc::default(),
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }

    /// The same, giving up a use unanswered after `limit`.
    pub fn with_query_timeout(self, limit: Duration) -> Self {
        Self {
            query_timeout: limit,
            ..self
        }
    }

    /// The pool underneath, for its figures.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `work` on a connection. The connection is kept for the next use
    /// when `work` answers `Ok` and left it as it found it (no transaction
    /// open, no ROLLBACK of a dropped one still queued); otherwise, or when
    /// this future is dropped before `work` ends, it goes back through
    /// sqlx's checks. Waiting for a turn and a connection together take at
    /// most the pool's acquire timeout, and `work` at most the query timeout.
    pub async fn run<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        let deadline = tokio::time::Instant::now() + self.pool.options().get_acquire_timeout();
        // Under load a turn is usually free: no timer then.
        let _turn = match self.turns.try_acquire() {
            Ok(turn) => turn,
            Err(_) => tokio::time::timeout_at(deadline, self.turns.acquire())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?
                .map_err(|_| sqlx::Error::PoolClosed)?,
        };
        let (mut conn, taken) = self.take(deadline).await?;
        let Ok(result) = tokio::time::timeout(self.query_timeout, work(&mut conn)).await else {
            // Silent: close it, rather than hand it back to sqlx, whose ping
            // on return would wait on it as long.
            drop(conn.detach());
            return Err(unanswered(self.query_timeout).into());
        };
        // `should_flush`: a dropped transaction's ROLLBACK waits in the
        // write buffer until the connection's next use, its locks held.
        // One past the pool's `max_lifetime` goes back to sqlx too, which
        // closes it: a backend's caches grow for as long as it lives.
        let expired = self
            .pool
            .options()
            .get_max_lifetime()
            .is_some_and(|lifetime| taken.elapsed() >= lifetime);
        if result.is_ok() && !conn.is_in_transaction() && !conn.should_flush() && !expired {
            let stale = self.keep(Idle {
                conn,
                since: Instant::now(),
                taken,
            });
            // Closed outside the lock.
            for mut idle in stale {
                idle.conn.close_on_drop();
            }
        }
        result
    }

    /// Puts `idle` on the stack, and takes off it those idle for longer than
    /// the pool's `idle_timeout`, to be closed: the bottom of the stack,
    /// where the connections the load no longer needs sink.
    fn keep(&self, idle: Idle) -> Vec<Idle> {
        let now = idle.since;
        let mut stack = self.stack();
        stack.push(idle);
        let Some(limit) = self.pool.options().get_idle_timeout() else {
            return Vec::new();
        };
        // Pushed in the order they were last used: oldest at the bottom.
        let stale = stack.partition_point(|i| now.duration_since(i.since) > limit);
        stack.drain(..stale).collect()
    }

    fn stack(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Nothing panics while holding the lock; a poisoned stack is whole.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used connection on the stack, or one from the pool,
    /// by `deadline`, with when this `Db` first took it from the pool.
    async fn take(
        &self,
        deadline: tokio::time::Instant,
    ) -> sqlx::Result<(PoolConnection<Postgres>, Instant)> {
        loop {
            let Some(Idle {
                mut conn,
                since,
                taken,
            }) = self.stack().pop()
            else {
                let conn = tokio::time::timeout_at(deadline, self.pool.acquire())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??;
                return Ok((conn, Instant::now()));
            };
            if since.elapsed() <= PING_IF_IDLE_FOR {
                return Ok((conn, taken));
            }
            match tokio::time::timeout_at(deadline, conn.ping()).await {
                Ok(Ok(())) => return Ok((conn, taken)),
                // Broken, by a restart of PostgreSQL most likely: close it.
                Ok(Err(_)) => conn.close_on_drop(),
                // Silent: close it, rather than hand it back to sqlx, whose
                // ping on return would wait on it as long.
                Err(_) => {
                    drop(conn.detach());
                    return Err(sqlx::Error::PoolTimedOut);
                }
            }
        }
    }
}

/// Errors that pass when the database comes back: connection trouble, a
/// server shutting down or overloaded, a serialization conflict.
pub fn is_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod options_tests {
    use sqlx::postgres::PgSslMode;

    #[test]
    fn a_server_on_this_machine_is_spoken_to_without_tls_unless_the_url_says() {
        for (url, want) in [
            ("postgres://u@127.0.0.1/db", PgSslMode::Disable),
            ("postgres://u@localhost:5432/db", PgSslMode::Disable),
            (
                "postgres://u@127.0.0.1/db?sslmode=require",
                PgSslMode::Require,
            ),
            ("postgres://u@db.example/db", PgSslMode::Prefer),
            (
                "postgres://u@db.example/db?sslmode=verify-full",
                PgSslMode::VerifyFull,
            ),
        ] {
            let got = super::options(url).unwrap().get_ssl_mode();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{url}");
        }
    }
}
