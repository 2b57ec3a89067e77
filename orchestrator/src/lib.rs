//! The saga orchestrator: runs any saga described by a definition document
//! against plain-HTTP participants, persisting every step in PostgreSQL and
//! compensating in reverse on failure.
//!
//! - [`definition`]: the document, its templates, its checks, dry runs, and
//!   the versions this process has compiled.
//! - [`saga`]: the engine that starts sagas and drives each one in a task of
//!   its own, recovery, and the batching writer.
//! - [`participants`]: the HTTP client that makes each step's call.
//! - [`store`]: every read and write of the `orchestrator` schema.
//! - [`retry`]: how failed calls are retried.
//! - [`webhooks`]: a saga's end sent, signed, to the subscribed URLs.
//! - [`http`]: the API (`/sagas`, `/definitions`, and the travel sample's
//!   `/trip` and `/trips`, with [`travel`] checking the trip's fields).
//! - [`console`]: the pages under `/ui`, drawn from what the API reads.
//! - [`cli`]: `orchestrator validate` and `orchestrator dry-run`.
//!
//! A request that starts a saga hands the create and the driving to a task
//! of the engine's, then waits on a channel for the saga to end.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use axum::Router;
use axum::extract::FromRef;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod cli;
pub mod console;
pub mod definition;
pub mod http;
pub mod metrics;
pub mod participants;
pub mod retry;
pub mod saga;
pub mod store;
pub mod travel;
pub mod webhooks;

use definition::{Document, Format};
use participants::{BaseUrl, Participants};
use saga::engine::{Engine, EngineConfig};

/// The schema this service owns.
pub const SCHEMA: &str = "orchestrator";

/// Server settings of the orchestrator's database connections. Every query
/// it makes finds its rows by key or through a partial index. Without
/// statistics (a new table, before autovacuum has analyzed it) the planner
/// takes `orchestrator.sagas` for a few pages and joins each batch of
/// transitions to a scan of the whole table; this keeps it on the indexes
/// whatever the statistics say. For the same reason a batch joined to the
/// table is a loop of key lookups, never a hash or merge join over a whole
/// index (which a small table, unanalyzed, is planned as, and a generic
/// plan keeps as the table grows). The writer's statement matches its own
/// small sets with `= ANY (ARRAY(...))` rather than joins, which these
/// settings would make nested loops.
///
/// A scan these settings disable but a query still needs (the few rows of
/// `orchestrator.webhooks`, which has no index to use instead) is costed
/// past `jit_above_cost`, and PostgreSQL would compile the writer's
/// statement to machine code on every new connection: 400 ms for a query
/// that runs in one. No query here is long enough to gain from JIT.
const DB_SETTINGS: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("enable_mergejoin", "off"),
    ("enable_hashjoin", "off"),
    ("jit", "off"),
];

/// Connects to `url` as the orchestrator does (its connection settings, its
/// schema) and applies the schema's migrations.
pub async fn connect(url: &str, pool: common::db::PoolConfig) -> anyhow::Result<PgPool> {
    let pool = common::db::PoolConfig {
        settings: DB_SETTINGS,
        ..pool
    };
    common::db::connect_and_migrate(url, SCHEMA, migrator(), pool).await
}

/// The migrations of the `orchestrator` schema, applied at start-up.
pub fn migrator() -> Migrator {
    sqlx::migrate!("../migrations/orchestrator")
}

/// Orchestrator settings, from flags or the environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "orchestrator", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,

    /// Base URL of the travel saga's participant `flights` (flights-svc);
    /// `PARTICIPANT_FLIGHTS_URL` overrides it.
    #[arg(long, env = "FLIGHTS_URL", default_value = "http://127.0.0.1:8081")]
    pub flights_url: String,

    /// Base URL of the travel saga's participant `cars` (cars-svc).
    #[arg(long, env = "CARS_URL", default_value = "http://127.0.0.1:8082")]
    pub cars_url: String,

    /// Base URL of the travel saga's participant `payments` (payments-svc).
    #[arg(long, env = "PAYMENTS_URL", default_value = "http://127.0.0.1:8083")]
    pub payments_url: String,

    /// A participant's base URL, as NAME=URL (repeatable). The environment's
    /// `PARTICIPANT_<NAME>_URL` variables are read too
    /// ([`participant_urls_from_env`]).
    #[arg(long = "participant", value_name = "NAME=URL")]
    pub participants: Vec<String>,

    /// The key a participant checks its calls' signatures with, as
    /// NAME=ID:SECRET (repeatable). The environment's
    /// `PARTICIPANT_<NAME>_KEY` (or `_KEY_FILE`) variables are read too
    /// ([`participant_keys_from_env`]). A participant without one is
    /// called unsigned.
    #[arg(long = "participant-key", value_name = "NAME=ID:SECRET")]
    pub participant_keys: Vec<String>,

    /// The folder of saga definitions (`*.yaml`, `*.yml`, `*.json`)
    /// registered at start-up.
    #[arg(long, env = "SAGAS_DIR", default_value = "sagas")]
    pub sagas_dir: PathBuf,

    /// How long `GET /trip` and `POST /trips` wait for the saga to end before
    /// answering 202, in seconds (per request: `?wait=`).
    #[arg(long, env = "TRIP_WAIT_SECS", default_value_t = 10)]
    pub trip_wait_secs: u64,

    /// Default deadline of a saga's forward steps, in seconds; a trip may
    /// set its own (`deadline_secs`). None: no deadline.
    #[arg(long, env = "SAGA_DEADLINE_SECS")]
    pub saga_deadline_secs: Option<u64>,

    /// This process's identity, the owner of its leases (default: the host name).
    #[arg(long, env = "ORCHESTRATOR_ID")]
    pub orchestrator_id: Option<String>,

    /// How long a saga's lease lasts without progress, in seconds. Another
    /// process takes an unfinished saga over once its lease has run out. It
    /// must exceed twice the attempt timeout (a wait for a turn, then the
    /// attempt) plus the longest retry delay, since every attempt's record
    /// renews it.
    #[arg(long, env = "LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,

    /// Most calls in flight to each participant at once; more sagas wait
    /// their turn in line (and share these connections). A wait spends no
    /// attempt, however long.
    #[arg(long, env = "PARTICIPANT_MAX_IN_FLIGHT", default_value_t = 64)]
    pub participant_max_in_flight: usize,

    /// The longest participant answer read, in bytes; a longer one fails
    /// its attempt.
    #[arg(long, env = "PARTICIPANT_MAX_ANSWER_BYTES", default_value_t = 1024 * 1024)]
    pub participant_max_answer_bytes: usize,

    /// The keys the API and the console take (`id:scope:secret`,
    /// comma-separated; scope `read`, `start` or `operator`; or the file
    /// API_KEYS_FILE names). Unset: the API is open to anyone who can
    /// reach it. Never printed.
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A PEM file of root certificates (a private CA) that an https
    /// participant URL's certificate may chain to, besides the system's.
    #[arg(long, env = "PARTICIPANT_CA_FILE")]
    pub participant_ca_file: Option<PathBuf>,

    /// How often to look for sagas whose lease ran out, in milliseconds.
    #[arg(long, env = "RECOVERY_INTERVAL_MS", default_value_t = 1_000)]
    pub recovery_interval_ms: u64,

    #[command(flatten)]
    pub retry: retry::RetryConfig,

    #[command(flatten)]
    pub limits: saga::admission::Limits,

    #[command(flatten)]
    pub webhooks: webhooks::WebhookConfig,

    #[command(flatten)]
    pub common: common::config::CommonConfig,
}

impl Config {
    /// Settings for a database and the three participants, every other
    /// field at its default.
    pub fn new(database_url: &str, flights_url: &str, cars_url: &str, payments_url: &str) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".into(),
            flights_url: flights_url.into(),
            cars_url: cars_url.into(),
            payments_url: payments_url.into(),
            participants: Vec::new(),
            participant_keys: Vec::new(),
            sagas_dir: PathBuf::from(REPOSITORY_SAGAS),
            trip_wait_secs: 10,
            saga_deadline_secs: None,
            orchestrator_id: None,
            lease_secs: 30,
            recovery_interval_ms: 1_000,
            participant_max_in_flight: 64,
            participant_max_answer_bytes: 1024 * 1024,
            participant_ca_file: None,
            api_keys: None,
            retry: retry::RetryConfig::default(),
            limits: saga::admission::Limits::default(),
            webhooks: webhooks::WebhookConfig::default(),
            common: common::config::CommonConfig::new(database_url),
        }
    }

    /// The certificates of `PARTICIPANT_CA_FILE`, if set.
    pub fn participant_roots(&self) -> anyhow::Result<Vec<reqwest::Certificate>> {
        let Some(path) = &self.participant_ca_file else {
            return Ok(Vec::new());
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read PARTICIPANT_CA_FILE {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "PARTICIPANT_CA_FILE {} holds no PEM certificate",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !roots.is_empty(),
            "PARTICIPANT_CA_FILE {} holds no PEM certificate",
            path.display()
        );
        Ok(roots)
    }

    /// Every participant's base URL, by name, with the setting that gave it:
    /// the travel saga's three, then `--participant` and
    /// `PARTICIPANT_<NAME>_URL`, which override them.
    pub fn participant_urls(&self) -> anyhow::Result<BTreeMap<String, BaseUrl>> {
        let mut urls = BTreeMap::new();
        for (name, setting, url) in [
            ("flights", "FLIGHTS_URL", &self.flights_url),
            ("cars", "CARS_URL", &self.cars_url),
            ("payments", "PAYMENTS_URL", &self.payments_url),
        ] {
            urls.insert(
                name.to_owned(),
                BaseUrl {
                    setting: setting.to_owned(),
                    url: url.clone(),
                    key: None,
                },
            );
        }
        for given in &self.participants {
            let (name, url) = given.split_once('=').with_context(|| {
                format!(
                    "--participant {given:?} is not NAME=URL, such as shop=http://127.0.0.1:9000"
                )
            })?;
            urls.insert(
                name.to_ascii_lowercase(),
                BaseUrl {
                    setting: definition::validate::url_setting(name),
                    url: url.to_owned(),
                    key: None,
                },
            );
        }
        for given in &self.participant_keys {
            let (name, key) = given.split_once('=').with_context(
                || "a participant key is NAME=ID:SECRET, such as flights=k1:<32 random characters>",
            )?;
            let setting = format!("PARTICIPANT_{}_KEY", name.to_ascii_uppercase());
            let key =
                common::auth::Key::parse(key).map_err(|err| anyhow::anyhow!("{setting}: {err}"))?;
            let base = urls.get_mut(&name.to_ascii_lowercase()).with_context(|| {
                format!("{setting} is given, but participant {name} has no URL")
            })?;
            base.key = Some(key);
        }
        Ok(urls)
    }

    fn owner(&self) -> String {
        self.orchestrator_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "orchestrator".into())
        })
    }
}

/// The repository's `sagas/` folder: the default of the in-process cluster
/// and the tests (the binary's default is `sagas` in its working folder).
pub const REPOSITORY_SAGAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas");

/// The `PARTICIPANT_<NAME>_URL` variables of the environment, as
/// `--participant` values (`name=url`). Read once, by `main`.
pub fn participant_urls_from_env() -> Vec<String> {
    std::env::vars()
        .filter_map(|(key, url)| {
            let name = key.strip_prefix("PARTICIPANT_")?.strip_suffix("_URL")?;
            (!name.is_empty()).then(|| format!("{}={url}", name.to_ascii_lowercase()))
        })
        .collect()
}

/// The `PARTICIPANT_<NAME>_KEY` variables of the environment (or the file
/// `PARTICIPANT_<NAME>_KEY_FILE` names), as `--participant-key` values.
pub fn participant_keys_from_env() -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    for (variable, value) in std::env::vars() {
        let Some(rest) = variable.strip_prefix("PARTICIPANT_") else {
            continue;
        };
        if let Some(name) = rest.strip_suffix("_KEY_FILE") {
            if std::env::var_os(format!("PARTICIPANT_{name}_KEY")).is_some() {
                continue;
            }
            let key = std::fs::read_to_string(&value).with_context(|| {
                format!("{variable}={value}: give a readable file holding ID:SECRET")
            })?;
            keys.push(format!("{}={}", name.to_ascii_lowercase(), key.trim_end()));
        } else if let Some(name) = rest.strip_suffix("_KEY") {
            keys.push(format!("{}={value}", name.to_ascii_lowercase()));
        }
    }
    Ok(keys)
}

/// Reads every definition file in `dir`, sorted by name, as documents.
pub fn read_definitions(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Document)>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read SAGAS_DIR={}: give the folder of saga definitions",
            dir.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let doc = Document::parse(&text, Format::from_path(&path))
                .with_context(|| format!("{} is not a saga definition", path.display()))?;
            Ok((path, doc))
        })
        .collect()
}

/// How [`run`] should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Finish the requests in flight, stop driving, hand the leases back.
    Graceful,
    /// Stop at once and keep the leases, as `kill -9` would: for tests of
    /// recovery.
    Crash,
}

/// What every handler gets: cheap to clone.
#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub pool: PgPool,
    pub trip_wait: Duration,
    /// The deadline of trips that set none.
    pub default_deadline_secs: Option<u64>,
}

/// The probes run on the pool as it is: the orchestrator's queries take
/// their connections from the pool, and a `Db` made for one probe keeps
/// none. A probe is given up as the orchestrator's other queries are.
impl FromRef<AppState> for common::db::Db {
    fn from_ref(state: &AppState) -> Self {
        Self::new(state.pool.clone()).with_query_timeout(state.engine.db_timeout())
    }
}

/// The service's routes (without middleware).
pub fn app(state: AppState) -> Router {
    let (router, api) = http::router().split_for_parts();
    let mut api = common::openapi::finish(
        "orchestrator",
        "Sagas as documents: start, read and act on sagas; register definitions; subscribe to webhooks",
        api,
    );
    // With API_KEYS (`http::access`), every path but the open ones.
    common::openapi::add_answers(
        &mut api,
        http::access::needs_a_key,
        &[
            (
                "401",
                "API_KEYS is set and the call carries none of them (unauthenticated)",
            ),
            (
                "403",
                "The call's key has a scope too low for it (forbidden)",
            ),
        ],
    );
    router
        .merge(common::health::router())
        .merge(common::openapi::router(&api))
        .merge(console::router())
        .with_state(state)
}

/// Connects, migrates, resumes this process's unfinished sagas and serves on
/// `listener` until `shutdown` completes; then stops driving sagas and, on a
/// graceful stop, hands their leases back.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = StopMode> + Send + 'static,
) -> anyhow::Result<()> {
    // The longest time between two writes of a driven saga: a wait for a
    // turn and an attempt (each at most ATTEMPT_TIMEOUT_MS), then a delay.
    let max_gap = 2 * config.retry.attempt_timeout_ms
        + config
            .retry
            .retry_max_delay_ms
            .max(config.retry.compensation_max_delay_ms);
    anyhow::ensure!(
        config.lease_secs * 1_000 > max_gap,
        "LEASE_SECS={} must exceed twice ATTEMPT_TIMEOUT_MS plus the longest retry delay \
         ({max_gap} ms), or live sagas would be taken over",
        config.lease_secs
    );
    // Before the database: a malformed URL or document is the setting's
    // error, whatever the database's state.
    let participants = Participants::new(
        &config.participant_urls()?,
        &config.retry,
        config.participant_max_in_flight,
        config.participant_max_answer_bytes,
        config.participant_roots()?,
    )?;
    let webhook = config.webhooks.configured()?;
    let documents = read_definitions(&config.sagas_dir)?;
    let pool = connect(&config.common.database_url, config.common.pool()).await?;
    let token = CancellationToken::new();
    let engine = Engine::new(
        pool.clone(),
        participants,
        &EngineConfig {
            owner: config.owner(),
            lease: Duration::from_secs(config.lease_secs),
            retry: config.retry.clone(),
            limits: config.limits.clone(),
            webhook_claim: config.webhooks.claim(),
        },
        token.clone(),
    );
    for (path, doc) in documents {
        register_at_start(&engine, &path, doc).await?;
    }
    engine.refresh_definitions().await?;
    store::webhooks::configure(
        &pool,
        webhook
            .as_ref()
            .map(|(url, secret)| (url.as_str(), secret.as_str())),
    )
    .await?;
    let started = engine.reclaim_own().await?;
    // As with its sagas, a process restarted under the same identity takes
    // up the deliveries it had claimed at once, not when the claims run out.
    store::webhooks::release_claims(&pool, engine.owner()).await?;
    let delivering = tokio::spawn(webhooks::deliver(
        Arc::clone(&engine),
        config.webhooks.clone(),
        token.clone(),
    ));
    let recovery = tokio::spawn(Arc::clone(&engine).recover(
        Duration::from_millis(config.recovery_interval_ms),
        Some(started),
    ));
    let state = AppState {
        engine: Arc::clone(&engine),
        pool,
        trip_wait: Duration::from_secs(config.trip_wait_secs.min(http::sagas::MAX_WAIT_SECS)),
        default_deadline_secs: config.saga_deadline_secs,
    };
    let request_timeout = Duration::from_secs(http::sagas::MAX_WAIT_SECS + 10);
    let mut registry = common::metrics::Registry::default();
    engine.register_metrics(&mut registry);
    let metrics = common::metrics::Metrics::new(registry);
    let mut router = app(state);
    match config.api_keys.as_deref() {
        Some(keys) => {
            let access = http::access::Access::parse(keys).context("API_KEYS")?;
            router = router
                .merge(http::access::login_router(access.clone()))
                .layer(axum::middleware::from_fn_with_state(
                    access,
                    http::access::check,
                ));
        }
        None => tracing::warn!(
            "API_KEYS is not set: the API and the console take calls from anyone who can reach them"
        ),
    }
    let router = common::server::with_middleware(router, &metrics, request_timeout);
    let (mode_tx, mode_rx) = tokio::sync::oneshot::channel();
    let stop_driving = token.clone();
    common::server::serve(listener, router, config.common.limits(), async move {
        let mode = shutdown.await;
        let _ = mode_tx.send(mode);
        // Wake the waiting requests and stop the drivers at once.
        stop_driving.cancel();
    })
    .await?;
    recovery.await?;
    delivering.await?;
    let mode = mode_rx.await.unwrap_or(StopMode::Graceful);
    engine.stop(mode == StopMode::Graceful).await;
    if mode == StopMode::Graceful {
        // The deliveries claimed here and not sent go to the other replicas
        // at once.
        if let Err(err) = store::webhooks::release_claims(engine.pool(), engine.owner()).await {
            tracing::warn!(%err, "cannot give back the webhook claims; they run out by themselves");
        }
    }
    Ok(())
}

/// Registers a definition file at start-up; its errors stop the start.
async fn register_at_start(engine: &Engine, path: &Path, doc: Document) -> anyhow::Result<()> {
    use saga::engine::RegisterError;
    match engine.register(doc).await {
        Ok((definition, _, warnings)) => {
            for warning in warnings {
                tracing::warn!(file = %path.display(), path = warning.path, code = warning.code, "{}", warning.message);
            }
            tracing::info!(file = %path.display(), name = %definition.name, version = definition.version, "definition registered");
            Ok(())
        }
        Err(RegisterError::Invalid(diagnostics)) => {
            let lines: Vec<String> = diagnostics
                .iter()
                .map(|d| format!("  {:?} {} at {}: {}", d.severity, d.code, d.path, d.message))
                .collect();
            anyhow::bail!("{} has errors:\n{}", path.display(), lines.join("\n"))
        }
        Err(err) => {
            Err(anyhow::Error::new(err).context(format!("cannot register {}", path.display())))
        }
    }
}
