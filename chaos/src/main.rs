//! The chaos command: runs the real binaries (three participants behind
//! fault proxies, several orchestrator replicas) on a private PostgreSQL,
//! drives N sagas at concurrency C with a mix of run types, kills processes
//! with SIGKILL at random times, pauses an orchestrator past its lease,
//! restarts PostgreSQL once, then waits for every saga to end and checks the
//! consistency invariant over every trip. It prints one summary line and
//! exits non-zero on any violation.
//!
//! Build the binaries first: `cargo build --release --bins`, then
//! `target/release/chaos --seed 42`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use faultproxy::{FaultProxy, Faults};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;

use testkit::procs::{Service, free_port};

/// The fault-injection suite.
#[derive(Debug, Parser)]
#[command(name = "chaos", version, about)]
struct Args {
    /// Sagas to run.
    #[arg(long, default_value_t = 2000)]
    sagas: usize,
    /// Sagas in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Seed of every random choice (faults, victims, timings).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Orchestrator replicas.
    #[arg(long, default_value_t = 3)]
    orchestrators: usize,
    /// Run types: `all` (the six in equal parts) or `success`.
    #[arg(long, default_value = "all")]
    mix: String,
    /// Shortest and longest time between two kills, in seconds.
    #[arg(long, default_value_t = 2.0)]
    kill_min_secs: f64,
    #[arg(long, default_value_t = 5.0)]
    kill_max_secs: f64,
    /// Share of participant responses lost after the participant acted.
    #[arg(long, default_value_t = 0.2)]
    lose_response_rate: f64,
    /// Share of participant requests sent twice.
    #[arg(long, default_value_t = 0.02)]
    duplicate_rate: f64,
    /// Share of participant requests answered 503 without being forwarded.
    #[arg(long, default_value_t = 0.02)]
    unavailable_rate: f64,
    /// Share of participant requests delayed (up to 200 ms).
    #[arg(long, default_value_t = 0.1)]
    delay_rate: f64,
    /// Share of trips whose client hangs up 1 to 50 ms after sending the
    /// start, and asks again 0.5 to 3 s later: the saga must be driven
    /// meanwhile, with no client waiting for it.
    #[arg(long, default_value_t = 0.1)]
    hang_up_rate: f64,
    /// Every saga must end within this many seconds of the last fault.
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// Where the service binaries are (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// What the fault schedule did.
#[derive(Debug, Default)]
struct FaultLog {
    kills: usize,
    pauses: usize,
    pg_restarts: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::telemetry::init(common::telemetry::LogFormat::Text, env!("CARGO_PKG_NAME"));
    let passed = run(&args).await?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let bin_dir = testkit::procs::service_bin_dir(args.bin_dir.as_deref())?;
    let logs = std::env::temp_dir().join(format!("chaos-{}-{}", args.seed, std::process::id()));
    std::fs::create_dir_all(&logs)?;

    let pg = tokio::task::spawn_blocking(|| {
        pglocal::PrivatePostgres::start(pglocal::Durability::Durable)
    })
    .await??;
    let admin = PgPool::connect(pg.url()).await?;
    sqlx::query("CREATE DATABASE chaos").execute(&admin).await?;
    admin.close().await;
    let db_url = format!("postgres://postgres@127.0.0.1:{}/chaos", pg.port());
    let pg = Arc::new(std::sync::Mutex::new(pg));
    let client = reqwest::Client::builder().no_proxy().build()?;

    let mut participants = Vec::new();
    for (bin, name) in [
        ("flights-svc", "flights"),
        ("cars-svc", "cars"),
        ("payments-svc", "payments"),
    ] {
        let port = free_port()?;
        let mut service = Service::new(
            &bin_dir,
            bin,
            name.to_owned(),
            format!("http://127.0.0.1:{port}"),
            vec![
                ("DATABASE_URL".into(), db_url.clone()),
                ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
                ("DB_MAX_CONNECTIONS".into(), "8".into()),
            ],
            &logs,
        );
        service.start()?;
        service.wait_ready(&client, Duration::from_secs(30)).await?;
        participants.push(service);
    }
    let mut proxies = Vec::new();
    for (i, participant) in participants.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let faults = Faults {
            seed: args.seed.wrapping_add(i as u64),
            delay_rate: args.delay_rate,
            min_delay_ms: 0,
            max_delay_ms: 200,
            lose_response_rate: args.lose_response_rate,
            duplicate_rate: args.duplicate_rate,
            unavailable_rate: args.unavailable_rate,
            reset_rate: 0.0,
        };
        proxies.push(FaultProxy::start(listener, &participant.url, faults)?);
    }
    let mut services = participants;
    let mut orchestrator_urls = Vec::new();
    for i in 0..args.orchestrators.max(1) {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let mut service = Service::new(
            &bin_dir,
            "orchestrator",
            format!("orchestrator-{i}"),
            url.clone(),
            vec![
                ("DATABASE_URL".into(), db_url.clone()),
                ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
                ("FLIGHTS_URL".into(), proxies[0].url.clone()),
                ("CARS_URL".into(), proxies[1].url.clone()),
                ("PAYMENTS_URL".into(), proxies[2].url.clone()),
                ("ORCHESTRATOR_ID".into(), format!("orchestrator-{i}")),
                ("LEASE_SECS".into(), "3".into()),
                ("ATTEMPT_TIMEOUT_MS".into(), "800".into()),
                ("RETRY_MAX_DELAY_MS".into(), "500".into()),
                ("COMPENSATION_MAX_DELAY_MS".into(), "1000".into()),
                ("RECOVERY_INTERVAL_MS".into(), "250".into()),
                ("DB_MAX_CONNECTIONS".into(), "10".into()),
            ],
            &logs,
        );
        service.start()?;
        service.wait_ready(&client, Duration::from_secs(30)).await?;
        orchestrator_urls.push(url);
        services.push(service);
    }
    let services = Arc::new(Mutex::new(services));

    // Load and faults run together; faults stop when the load is done.
    let started = Instant::now();
    let load_done = Arc::new(AtomicBool::new(false));
    let faults = tokio::spawn(fault_schedule(
        args.seed,
        (args.kill_min_secs, args.kill_max_secs),
        Arc::clone(&services),
        Arc::clone(&pg),
        Arc::clone(&load_done),
    ));
    let (load_errors, hang_ups) = drive_load(args, &client, &orchestrator_urls).await;
    load_done.store(true, Ordering::SeqCst);
    let (fault_log, last_fault) = faults.await??;

    // Everything back up, then every saga must end within the settle time.
    {
        let mut services = services.lock().await;
        for service in services.iter_mut() {
            if !service.is_running() {
                service.start()?;
            }
        }
        for service in services.iter_mut() {
            service.wait_ready(&client, Duration::from_secs(30)).await?;
        }
    }
    let pool = PgPool::connect(&db_url).await?;
    let settle_deadline = last_fault + Duration::from_secs(args.settle_secs);
    loop {
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orchestrator.sagas WHERE status IN ('running', 'compensating')",
        )
        .fetch_one(&pool)
        .await?;
        if unfinished == 0 || Instant::now() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = last_fault.elapsed().min(Instant::now() - last_fault);

    let report = testkit::invariant::check(&pool).await?;
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT saga_id, step FROM orchestrator.saga_log
             GROUP BY saga_id, step
             HAVING count(*) FILTER (WHERE status IN ('succeeded', 'failed')) > 1
                 OR count(*) FILTER (WHERE status = 'started') > 1) d",
    )
    .fetch_one(&pool)
    .await?;
    let missing = args.sagas.saturating_sub(report.sagas);
    let stats =
        |f: fn(&faultproxy::Stats) -> u64| proxies.iter().map(|p| f(p.stats())).sum::<u64>();
    println!(
        "sagas {}: succeeded {}, failed {}, unfinished {}, inconsistent {}, duplicate effects {}, orphans {} (seed {})",
        report.sagas,
        report.succeeded,
        report.failed,
        report.unfinished.len(),
        report.inconsistent.len(),
        duplicates,
        report.orphans.len(),
        args.seed
    );
    println!(
        "faults: {} kills, {} pauses past the lease, {} PostgreSQL restarts, {} lost responses, {} duplicated requests, \
         {} 503s, {} delays, {hang_ups} clients hung up; last saga ended {:.1} s after the last fault; {:.0} s in all; load errors {}, missing sagas {missing}",
        fault_log.kills,
        fault_log.pauses,
        fault_log.pg_restarts,
        stats(|s| s.lost_responses.load(Ordering::Relaxed)),
        stats(|s| s.duplicated.load(Ordering::Relaxed)),
        stats(|s| s.unavailable.load(Ordering::Relaxed)),
        stats(|s| s.delayed.load(Ordering::Relaxed)),
        settled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        load_errors.len(),
    );
    for problem in report
        .unfinished
        .iter()
        .chain(&report.inconsistent)
        .chain(&report.orphans)
        .chain(&load_errors)
        .take(20)
    {
        eprintln!("  {problem}");
    }
    let passed = report.unfinished.is_empty()
        && report.inconsistent.is_empty()
        && report.orphans.is_empty()
        && duplicates == 0
        && report.succeeded > 0
        && missing == 0
        && load_errors.is_empty();

    let mut services = services.lock().await;
    for service in services.iter_mut() {
        service.kill().await;
    }
    drop(services);
    pool.close().await;
    if let Ok(pg) = Arc::try_unwrap(pg) {
        let pg = pg.into_inner().unwrap_or_else(|p| p.into_inner());
        tokio::task::spawn_blocking(move || pg.stop()).await?;
    }
    if passed {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        eprintln!("the services' logs are in {}", logs.display());
    }
    Ok(passed)
}

/// Starts every trip through a live orchestrator, retrying on another one
/// when the one asked dies (starting is idempotent by trip id). Returns the
/// trips that could not be started, with why, and how many clients hung up.
async fn drive_load(
    args: &Args,
    client: &reqwest::Client,
    urls: &[String],
) -> (Vec<String>, usize) {
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hang_ups = AtomicUsize::new(0);
    let all = args.mix != "success";
    let next_url = AtomicUsize::new(0);
    futures::stream::iter(0..args.sagas)
        .for_each_concurrent(args.concurrency.max(1), |i| {
            let errors = Arc::clone(&errors);
            let (next_url, hang_ups) = (&next_url, &hang_ups);
            async move {
                // Seeded per trip, whatever order the trips run in.
                let mut rng =
                    StdRng::seed_from_u64(args.seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
                let mut hang_up = rng.random_bool(args.hang_up_rate.clamp(0.0, 1.0));
                let run_type = if all {
                    common::wire::RunType::ALL[i % 6].as_str()
                } else {
                    "success"
                };
                let body =
                    json!({ "trip_id": format!("chaos-{}-{i}", args.seed), "run_type": run_type });
                let give_up = Instant::now() + Duration::from_secs(300);
                loop {
                    let url = &urls[next_url.fetch_add(1, Ordering::Relaxed) % urls.len()];
                    let timeout = if hang_up {
                        Duration::from_millis(rng.random_range(1..=50))
                    } else {
                        Duration::from_secs(15)
                    };
                    let answer = client
                        .post(format!("{url}/trips?wait=10"))
                        .json(&body)
                        .timeout(timeout)
                        .send()
                        .await;
                    if std::mem::take(&mut hang_up) && answer.is_err() {
                        hang_ups.fetch_add(1, Ordering::Relaxed);
                        let back = rng.random_range(500..=3_000);
                        tokio::time::sleep(Duration::from_millis(back)).await;
                        continue;
                    }
                    match answer {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) if r.status().is_client_error() => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("trip {i}: {status} {text}"));
                            return;
                        }
                        _ if Instant::now() > give_up => {
                            errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("trip {i}: no orchestrator answered for 300 s"));
                            return;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        })
        .await;
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner());
    (errors.clone(), hang_ups.into_inner())
}

/// Until the load is done: every 2-5 s (seeded), kill -9 a random service
/// and start it again 0.2 to 1 s later (an orchestrator: up to 4.5 s); as
/// the second fault, pause an orchestrator past its lease instead; as the
/// third, restart PostgreSQL immediately. Returns when the last fault
/// happened.
async fn fault_schedule(
    seed: u64,
    (min, max): (f64, f64),
    services: Arc<Mutex<Vec<Service>>>,
    pg: Arc<std::sync::Mutex<pglocal::PrivatePostgres>>,
    load_done: Arc<AtomicBool>,
) -> anyhow::Result<(FaultLog, Instant)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut log = FaultLog::default();
    let mut last_fault = Instant::now();
    let mut round = 0usize;
    loop {
        let wait = Duration::from_secs_f64(rng.random_range(min..=max.max(min)));
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if load_done.load(Ordering::SeqCst) {
                return Ok((log, last_fault));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        round += 1;
        if round == 3 && log.pg_restarts == 0 {
            let pg = Arc::clone(&pg);
            tokio::task::spawn_blocking(move || {
                pg.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restart_immediate()
            })
            .await??;
            log.pg_restarts += 1;
            tracing::warn!("chaos: restarted PostgreSQL (immediate)");
        } else if round == 2 && log.pauses == 0 {
            let mut services = services.lock().await;
            let orchestrators: Vec<usize> = (0..services.len())
                .filter(|&i| services[i].name.starts_with("orchestrator"))
                .collect();
            let victim = orchestrators[rng.random_range(0..orchestrators.len())];
            tracing::warn!(
                victim = services[victim].name,
                "chaos: pausing past the lease"
            );
            services[victim].pause(Duration::from_secs(5)).await;
            log.pauses += 1;
        } else {
            let mut services = services.lock().await;
            // Orchestrators are killed twice as often as participants.
            let weights: Vec<usize> = services
                .iter()
                .map(|s| {
                    if s.name.starts_with("orchestrator") {
                        2
                    } else {
                        1
                    }
                })
                .collect();
            let mut pick = rng.random_range(0..weights.iter().sum::<usize>());
            let victim = weights
                .iter()
                .position(|&w| {
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            tracing::warn!(victim = services[victim].name, "chaos: kill -9");
            services[victim].kill().await;
            log.kills += 1;
            // An orchestrator down past its lease (3 s) has its sagas taken
            // over by the others; one back sooner reclaims them itself.
            let longest = if services[victim].name.starts_with("orchestrator") {
                4_500
            } else {
                1_000
            };
            let down = Duration::from_millis(rng.random_range(200..=longest));
            tokio::time::sleep(down).await;
            services[victim].start()?;
        }
        last_fault = Instant::now();
    }
}
