//! The native runner: the whole cluster with one command.

use clap::Parser;
use cluster::{Cluster, Listeners};
use common::telemetry::LogFormat;

/// Runs the travel saga cluster: the orchestrator and the three participants
/// on four consecutive ports, against DATABASE_URL or a private PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about)]
struct Args {
    /// PostgreSQL URL. When unset, a private PostgreSQL is started from this
    /// machine's PostgreSQL binaries, and its data is deleted at exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Host to listen on.
    #[arg(long, env = "CLUSTER_HOST", default_value = "127.0.0.1")]
    host: String,

    /// Port of the orchestrator; the participants take the next three
    /// (flights, cars, payments). 0 picks four free ports.
    #[arg(long, env = "CLUSTER_PORT", default_value_t = 8080)]
    port: u16,

    /// How long `GET /trip` waits for a saga to end before answering 202.
    #[arg(long, env = "TRIP_WAIT_SECS", default_value_t = 10)]
    trip_wait_secs: u64,

    /// The folder of saga definitions to register (`*.yaml`, `*.yml`,
    /// `*.json`); the repository's `sagas/` by default.
    #[arg(long, env = "SAGAS_DIR")]
    sagas_dir: Option<std::path::PathBuf>,

    /// A participant of your own definitions, as `name=url`; repeatable.
    /// `PARTICIPANT_<NAME>_URL` variables are read too.
    #[arg(long = "participant", value_name = "NAME=URL")]
    participants: Vec<String>,

    #[command(flatten)]
    retry: orchestrator::retry::RetryConfig,

    /// Log line format: text or json (the filter is RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = common::config::parse();
    common::telemetry::init(args.log_format, "cluster");
    let listeners = Listeners::bind(&args.host, args.port).await?;
    let (database_url, private) = match args.database_url.filter(|url| !url.is_empty()) {
        Some(url) => (url, None),
        None => {
            let pg = tokio::task::spawn_blocking(|| {
                pglocal::PrivatePostgres::start(pglocal::Durability::Durable)
            })
            .await??;
            (pg.url().to_owned(), Some(pg))
        }
    };
    let retry = args.retry.clone();
    let trip_wait_secs = args.trip_wait_secs;
    let mut participants = orchestrator::participant_urls_from_env();
    participants.extend(args.participants);
    let cluster = Cluster::start(&database_url, listeners, &[], |config| {
        config.retry = retry;
        config.trip_wait_secs = trip_wait_secs;
        config.participants.extend(participants);
        if let Some(dir) = args.sagas_dir {
            config.sagas_dir = dir;
        }
    })
    .await?;

    let o = &cluster.orchestrator_url;
    // A password is not printed.
    let shown = common::config::redacted(&database_url);
    println!(
        "\ntravel saga cluster is up\n\
         \x20 orchestrator  {o}\n\
         \x20 flights-svc   {}\n\
         \x20 cars-svc      {}\n\
         \x20 payments-svc  {}\n\
         \x20 database      {shown}{}\n\n\
         try:\n\
         \x20 curl -s '{o}/trip?runType=failPayment&tripID=trip-1'\n\
         \x20 psql '{shown}' -c \"SELECT seq, step, status, attempt, at FROM orchestrator.saga_log WHERE saga_id = 'trip-1' ORDER BY seq\"\n\n\
         Ctrl-C stops everything.\n",
        cluster.flights_url,
        cluster.cars_url,
        cluster.payments_url,
        if private.is_some() {
            "  (private, deleted at exit)"
        } else {
            ""
        },
    );

    common::shutdown::signal().await;
    let stopped = cluster.stop().await;
    if let Some(pg) = private {
        tokio::task::spawn_blocking(move || pg.stop()).await?;
    }
    stopped
}
