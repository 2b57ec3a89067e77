//! Settings every service takes, flattened into each service's own `Config`.

use clap::Args;

use crate::telemetry::LogFormat;

/// Database and logging settings shared by all four services.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/travel
    /// (or the file DATABASE_URL_FILE names holds it). Never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
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

    /// Largest number of client connections open at once; more wait to be
    /// accepted until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = crate::server::Limits::default().max_connections)]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers (and how
    /// long an idle keep-alive connection stays open), in seconds.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = crate::server::Limits::default().header_read_timeout.as_secs())]
    pub header_read_timeout_secs: u64,
}

impl CommonConfig {
    /// Settings for `url` with every other field at its default.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            db_max_connections: 10,
            db_query_timeout_ms: 10_000,
            log_format: LogFormat::Text,
            max_connections: crate::server::Limits::default().max_connections,
            header_read_timeout_secs: crate::server::Limits::default()
                .header_read_timeout
                .as_secs(),
        }
    }

    pub fn limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
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

/// The secret settings a file may give instead of the environment, as
/// container secrets are handed over: `<NAME>_FILE` names the file when
/// `<NAME>` is not set; and their flags.
pub const SECRETS_FROM_FILES: [(&str, &str); 4] = [
    ("DATABASE_URL", "--database-url"),
    ("DATABASE_ADMIN_URL", "--database-admin-url"),
    ("AUTH_KEYS", "--auth-keys"),
    ("API_KEYS", "--api-keys"),
];

/// `C` parsed from the command line and the environment, each secret of
/// [`SECRETS_FROM_FILES`] that `C` takes read from the file its `_FILE`
/// variable names when the variable itself is not set (its trailing line
/// break dropped).
/// A file that cannot be read stops the start, naming the variable.
pub fn parse<C: clap::Parser>() -> C {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] of the command line `args` (the program's name first).
pub fn parse_from<C: clap::Parser>(mut args: Vec<std::ffi::OsString>) -> C {
    let command = C::command();
    for (name, flag) in SECRETS_FROM_FILES {
        let takes = command
            .get_arguments()
            .any(|a| a.get_long() == flag.strip_prefix("--"));
        if !takes || std::env::var_os(name).is_some() {
            continue;
        }
        let Some(path) = std::env::var_os(format!("{name}_FILE")) else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                args.push(flag.into());
                args.push(text.trim_end_matches(['\n', '\r']).into());
            }
            Err(err) => {
                eprintln!(
                    "error: {name}_FILE={}: {err}; give a readable file holding the value",
                    std::path::Path::new(&path).display()
                );
                std::process::exit(2);
            }
        }
    }
    C::parse_from(args)
}

/// `url` with its password, if any, replaced by `***`, to be printed.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(
            redacted("postgres://flights:hunter2@db:5432/travel"),
            "postgres://flights:***@db:5432/travel"
        );
        assert_eq!(
            redacted("postgres://postgres@127.0.0.1:5432/x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert!(!redacted("not a url:hunter2@").contains("hunter2"));
    }
}
