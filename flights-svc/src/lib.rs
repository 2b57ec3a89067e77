//! flights-svc: the flights participant of the travel saga.
//!
//! It owns the `flights` schema (one row per trip in `flights.reservations`)
//! and answers reserve, confirm and cancel over HTTP ([`http`]). Every call is
//! idempotent, cancel succeeds from every state, and a cancel for a trip never
//! seen leaves a tombstone that refuses a late reserve.

use std::future::Future;

use axum::Router;
use axum::extract::FromRef;
use common::booking::FailureInjection;
use common::db::Db;
use common::metrics::ParticipantMetrics;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub mod http;

/// The schema this service owns.
pub const SCHEMA: &str = "flights";

/// The migrations of the `flights` schema, applied at start-up.
pub fn migrator() -> Migrator {
    sqlx::migrate!("../migrations/flights")
}

/// flights-svc settings, from flags or the environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "flights-svc", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub listen_addr: String,

    #[command(flatten)]
    pub common: common::config::CommonConfig,

    #[command(flatten)]
    pub failure_injection: FailureInjection,

    #[command(flatten)]
    pub auth: common::auth::ParticipantAuth,
}

/// What every handler gets: cheap to clone.
#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    pub db: Db,
    pub metrics: ParticipantMetrics,
    pub failure_injection: FailureInjection,
}

/// The service's routes, as the binary serves them (without middleware).
pub fn app(state: AppState) -> Router {
    http::router().with_state(state)
}

/// Connects, migrates and serves on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    common::server::run_participant(
        &config.common,
        &config.auth,
        SCHEMA,
        migrator(),
        |db, metrics| {
            app(AppState {
                db,
                metrics,
                failure_injection: config.failure_injection,
            })
        },
        listener,
        shutdown,
    )
    .await
}
