//! Settings every service takes, flattened into each service's own `Config`.

use clap::Args;

use crate::telemetry::LogFormat;

/// Database and logging settings shared by all four services.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/travel.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Largest number of pooled database connections.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// How long a participant's use of the database may go unanswered
    /// before it is given up (its connection closed) and the call answered
    /// 503, in milliseconds.
    #[arg(long, env = "DB_QUERY_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_query_timeout_ms: u64,

    /// Log line format: text or json (the filter is RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// Settings for `url` with every other field at its default.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            db_max_connections: 10,
            db_query_timeout_ms: 10_000,
            log_format: LogFormat::Text,
        }
    }

    pub fn query_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.db_query_timeout_ms)
    }

    pub fn pool(&self) -> crate::db::PoolConfig {
        crate::db::PoolConfig {
            max_connections: self.db_max_connections,
            ..Default::default()
        }
    }
}
