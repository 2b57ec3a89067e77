//! The benchmark command: starts the real binaries (or uses a given
//! database), drives N sagas at concurrency C through the orchestrator, then
//! makes the same five participant calls per trip directly (the floor: no
//! orchestrator), and reports for each: completed sagas per second, latency
//! percentiles, errors, CPU seconds and peak memory of each process, and
//! PostgreSQL transactions per saga. With `--restate`, the same saga on
//! Restate (`peers/restate`) too, on the same participants, in the same run.
//!
//! `cargo build --release --bins && target/release/bench --sagas 5000 --concurrency 64`

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use backon::{ConstantBuilder, Retryable};
use clap::Parser;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::procs::{Service, free_port};
use tokio::time::Instant;

mod open_loop;
mod recovery;
mod restate;
mod slow;
mod webhooks;

#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Args {
    /// Sagas per measured phase.
    #[arg(long, default_value_t = 5000)]
    sagas: usize,
    /// Sagas in flight at once (closed loop: C clients, each starting the
    /// next saga when its last one ended).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop instead: start this many sagas per second, whatever their
    /// latency (0: closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Run types: `success`, or `all` (the six in equal parts).
    #[arg(long, default_value = "success")]
    mix: String,
    /// Start each saga with `wait=0` (the request returns at once) and
    /// measure until every saga has ended: sagas in flight are then not
    /// held by open requests. Latencies are those of the start requests.
    #[arg(long)]
    no_wait: bool,
    /// Before measuring, fill `orchestrator.sagas` with this many finished
    /// sagas (five log rows each), to check that nothing on the hot path
    /// scans a table.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Sagas run first and not measured.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Run the phases this many times, alternating, and report the median
    /// of each figure and of each round's ratios: the machine's speed
    /// drifts, and a ratio is only fair between phases run close together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Skip the floor phase.
    #[arg(long)]
    no_floor: bool,
    /// PostgreSQL server to use (a fresh database is created on it); default:
    /// a private PostgreSQL with default settings.
    #[arg(long, env = "BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Write the raw results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the service binaries are (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Orchestrator settings passed on, as NAME=VALUE (repeatable).
    #[arg(long = "orchestrator-env")]
    orchestrator_env: Vec<String>,
    /// Measure a second orchestrator too, as a phase named `candidate` right
    /// after `orchestrated` in each round: the one in this folder (a build to
    /// compare), with `--candidate-env` on top. Phases seconds apart see the
    /// same machine; separate runs do not.
    #[arg(long)]
    candidate_bin_dir: Option<PathBuf>,
    /// The candidate's orchestrator settings, as NAME=VALUE (repeatable); on
    /// their own they compare settings of one build.
    #[arg(long = "candidate-env")]
    candidate_env: Vec<String>,
    /// Run the same saga on Restate too, as a third phase (install it first:
    /// `peers/restate/install.sh`).
    #[arg(long)]
    restate: bool,
    /// Where the Restate peer is installed.
    #[arg(long, default_value = "peers/restate")]
    restate_dir: PathBuf,
    /// Instead of the phases: start N sagas, `kill -9` the orchestrator
    /// while they are unfinished, restart it and time until all have ended
    /// (`--recovery` alone: 10000).
    #[arg(long, num_args = 0..=1, default_missing_value = "10000")]
    recovery: Option<usize>,
    /// Instead of the phases: an open-loop sweep. Starts arrive at a
    /// constant rate whatever the answers, each with a client timeout of
    /// 10 s, latency counted from the intended send time; one run per rate
    /// of `--open-loop-rates`, multiples of the capacity measured closed loop
    /// first (`--sagas`, `--concurrency`) or given (`--capacity`).
    #[arg(long)]
    open_loop: bool,
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,1.5,2,4")]
    open_loop_rates: Vec<f64>,
    /// Seconds of offered load per rate.
    #[arg(long, default_value_t = 20.0)]
    open_loop_secs: f64,
    /// The capacity the rates are multiples of, in sagas per second
    /// (default: measured closed loop).
    #[arg(long)]
    capacity: Option<f64>,
    /// With `--open-loop`: draw goodput and p99 against offered load here,
    /// as SVG.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Instead of the phases: starts at the capacity (measured closed loop
    /// first, or `--capacity`) for 50 s, while payments-svc, behind a fault
    /// proxy, is slow (1 s a call, 10% answered 503) from 10 s to 30 s;
    /// second by second, what the clients and the participant saw.
    #[arg(long)]
    slow_participant: bool,
    /// Subscribe a webhook receiver in this process to every orchestrator
    /// (`WEBHOOK_URL`), and end each phase only once its deliveries have
    /// been received.
    #[arg(long)]
    webhooks: bool,
    /// Export the orchestrators' spans (`OTEL_EXPORTER_OTLP_ENDPOINT`) to
    /// an OTLP/HTTP receiver in this process; `--candidate-env
    /// OTEL_EXPORTER_OTLP_ENDPOINT=` measures the same build without.
    #[arg(long)]
    otlp: bool,
}

/// One measured phase.
#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    /// Which round of `--rounds` (from 1).
    round: u32,
    sagas: usize,
    errors: usize,
    seconds: f64,
    sagas_per_sec: f64,
    latency_ms: Latency,
    pg_xacts_per_saga: f64,
    /// WAL flushes (`pg_stat_wal.wal_sync`, the whole server's) per saga:
    /// how well the phase's commits share their flushes.
    pg_wal_syncs_per_saga: f64,
    /// WAL written per saga, in KB (the whole server's).
    pg_wal_kb_per_saga: f64,
    /// Per process: CPU seconds used in the phase and peak RSS in MB.
    processes: Vec<(String, f64, f64)>,
    /// CPU seconds of the whole machine in the phase, all cores.
    machine_cpu_secs: f64,
    /// With `--no-wait`: the most sagas seen in flight at once.
    peak_in_flight: i64,
    /// With `--webhooks`: deliveries received in the phase.
    webhooks_received: usize,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(n) = args.recovery {
        return recovery::run(&args, n).await;
    }
    let client = http_client()?;
    let mut cluster = Cluster::start(&args, &client).await?;
    let receiver = match args.webhooks {
        true => Some(webhooks::Receiver::start(&cluster.logs).await?),
        false => None,
    };
    args.orchestrator_env
        .extend(receiver.iter().flat_map(webhooks::Receiver::env));
    let otlp = match args.otlp {
        true => Some(webhooks::Receiver::start_otlp().await?),
        false => None,
    };
    args.orchestrator_env
        .extend(otlp.iter().map(webhooks::Receiver::otlp_env));
    let port = free_port()?;
    let orchestrator_url = format!("http://127.0.0.1:{port}");
    // With --slow-participant, payments-svc is called through a fault proxy
    // (in this process), which the run slows down and lets recover.
    let slow_proxy = if args.slow_participant {
        Some(faultproxy::FaultProxy::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            &cluster.urls[2],
            faultproxy::Faults::default(),
        )?)
    } else {
        None
    };
    let proxied = slow_proxy
        .iter()
        .map(|proxy| ("PAYMENTS_URL", proxy.url.as_str()))
        .collect::<Vec<_>>();
    let mut orchestrator = cluster.orchestrator(&args, port, &proxied)?;
    orchestrator.start()?;
    orchestrator
        .wait_ready(&client, Duration::from_secs(30))
        .await?;
    let mut candidate = None;
    let mut candidate_pool = None;
    if args.candidate_bin_dir.is_some() || !args.candidate_env.is_empty() {
        let port = free_port()?;
        // Its own lease owner: by default both would be the host. Its own
        // database for its schema, on the same server, so that a build with
        // other migrations can be compared.
        let candidate_db = cluster.candidate_database().await?;
        let mut extra = vec![
            ("ORCHESTRATOR_ID", "bench-candidate"),
            ("DATABASE_URL", candidate_db.as_str()),
        ];
        for pair in &args.candidate_env {
            extra.push(
                pair.split_once('=')
                    .context("--candidate-env takes NAME=VALUE")?,
            );
        }
        let bin_dir = match &args.candidate_bin_dir {
            Some(dir) => dir.clone(),
            None => cluster.bin_dir.clone(),
        };
        let mut service = cluster.orchestrator_in(&bin_dir, "candidate", &args, port, &extra)?;
        service.start()?;
        service.wait_ready(&client, Duration::from_secs(30)).await?;
        candidate = Some(service);
        candidate_pool = Some(PgPool::connect(&candidate_db).await?);
    }
    let mut services = std::mem::take(&mut cluster.participants);
    services.push(orchestrator);

    let pool = PgPool::connect(&cluster.db_url).await?;
    if args.preload > 0 {
        preload(&pool, args.preload).await?;
    }
    let load = Load {
        args: &args,
        client: &client,
        orchestrator: &orchestrator_url,
        participants: &cluster.urls,
        restate: None,
        webhooks: receiver.as_ref().map(|r| (r, &pool)),
    };
    let ours: Vec<&Service> = services.iter().collect();
    if args.open_loop || args.slow_participant {
        let (capacity, closed_p50_ms, closed_peak_rss_mb) = match args.capacity {
            Some(capacity) => (capacity, 0.0, 0.0),
            None => {
                let closed =
                    measure(&load, &ours, &pool, &cluster.name, Kind::Orchestrated, 1).await?;
                let rss = closed
                    .processes
                    .iter()
                    .find(|(name, _, _)| name == "orchestrator")
                    .map_or(0.0, |(_, _, rss)| *rss);
                (closed.sagas_per_sec, closed.latency_ms.p50, rss)
            }
        };
        if let Some(proxy) = &slow_proxy {
            let report = slow::run(&orchestrator_url, capacity, &services[3], proxy, &pool).await?;
            slow::print(&report);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            pool.close().await;
            return cluster.stop().await;
        }
        let plan = open_loop::Plan {
            orchestrator_url: &orchestrator_url,
            multiples: &args.open_loop_rates,
            seconds: args.open_loop_secs,
            capacity,
            closed_p50_ms,
            closed_peak_rss_mb,
        };
        let sweep = open_loop::sweep(&plan, &services[3], &pool).await?;
        open_loop::print(&sweep);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&sweep)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &args.chart {
            open_loop::chart(&sweep, path)?;
        }
        pool.close().await;
        return cluster.stop().await;
    }
    let mut phases = Vec::new();
    for round in 1..=args.rounds {
        phases.push(
            measure(
                &load,
                &ours,
                &pool,
                &cluster.name,
                Kind::Orchestrated,
                round,
            )
            .await?,
        );
        if let Some(candidate) = &candidate {
            let load = Load {
                orchestrator: &candidate.url,
                webhooks: receiver.as_ref().zip(candidate_pool.as_ref()),
                ..load
            };
            let measured: Vec<&Service> = services[..3].iter().chain([candidate]).collect();
            phases.push(
                measure(
                    &load,
                    &measured,
                    &pool,
                    &cluster.name,
                    Kind::Candidate,
                    round,
                )
                .await?,
            );
        }
        if !args.no_floor {
            phases.push(measure(&load, &ours, &pool, &cluster.name, Kind::Floor, round).await?);
        }
        // Restate runs only during its phase: idle, its server still uses
        // CPU, which would be taken from the phases above.
        if args.restate {
            // Its ports are picked free, then bound by its server: another
            // process may take one in between. A new start picks new ones.
            let start = || {
                restate::Restate::start(&args.restate_dir, &cluster.urls, &cluster.logs, &client)
            };
            let mut peer = start
                .retry(ConstantBuilder::default().with_max_times(2))
                .notify(|err, _| {
                    eprintln!("bench: Restate did not start ({err}); starting it again")
                })
                .await?;
            let load = Load {
                restate: Some(&peer),
                ..load
            };
            // The participants, then Restate's server and service.
            let measured: Vec<&Service> = services[..3].iter().chain(peer.services()).collect();
            let phase = measure(&load, &measured, &pool, &cluster.name, Kind::Restate, round).await;
            peer.kill().await;
            phases.push(phase?);
        }
    }

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let loop_kind = if args.rate > 0 {
        format!("open loop at {}/s", args.rate)
    } else {
        format!("closed loop, concurrency {}", args.concurrency)
    };
    println!(
        "bench: {} {} sagas per phase, {loop_kind}; {cores} cores, {memory_gib:.0} GiB; {}",
        args.sagas,
        args.mix,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!(
        "{:<14} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>13} {:>14} {:>12}",
        "phase",
        "sagas/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "PG xacts/saga",
        "WAL syncs/saga",
        "WAL KB/saga"
    );
    let label = |p: &Phase| match args.rounds {
        1 => p.name.clone(),
        _ => format!("{} #{}", p.name, p.round),
    };
    for p in &phases {
        println!(
            "{:<14} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>13.2} {:>14.2} {:>12.1}",
            label(p),
            p.sagas_per_sec,
            p.latency_ms.p50,
            p.latency_ms.p95,
            p.latency_ms.p99,
            p.latency_ms.max,
            p.errors,
            p.pg_xacts_per_saga,
            p.pg_wal_syncs_per_saga,
            p.pg_wal_kb_per_saga
        );
    }
    for p in &phases {
        let usage: Vec<String> = p
            .processes
            .iter()
            .map(|(name, cpu, rss)| format!("{name} {cpu:.1} s / {rss:.0} MB"))
            .collect();
        println!(
            "{} CPU and peak RSS: {}; machine {:.1} CPU s ({:.2} ms a saga, {:.2} cores busy)",
            label(p),
            usage.join(", "),
            p.machine_cpu_secs,
            p.machine_cpu_secs * 1000.0 / p.sagas.max(1) as f64,
            p.machine_cpu_secs / p.seconds.max(f64::EPSILON)
        );
        if p.peak_in_flight > 0 {
            println!(
                "{}: at most {} sagas in flight at once",
                p.name, p.peak_in_flight
            );
        }
        if args.webhooks {
            println!("{}: {} webhooks received", label(p), p.webhooks_received);
        }
    }
    if let Some(otlp) = &otlp {
        println!("OTLP export requests received: {}", otlp.received());
    }
    let rounds: Vec<&[Phase]> = phases.chunk_by(|a, b| a.round == b.round).collect();
    let others: Vec<&str> = rounds[0][1..].iter().map(|p| p.name.as_str()).collect();
    let mut summary = serde_json::Map::new();
    for other in others {
        // Each round's ratios, then their median.
        let ratios = |figure: fn(&Phase) -> f64| {
            median(
                rounds
                    .iter()
                    .filter_map(|r| {
                        Some(figure(&r[0]) / figure(r.iter().find(|p| p.name == other)?))
                    })
                    .collect(),
            )
        };
        let (throughput, per_cpu, p50, p99) = (
            ratios(|p| p.sagas_per_sec),
            // Work done per CPU second of the whole machine: the machine's
            // speed drifts less within a round than its idle time does.
            ratios(|p| p.sagas as f64 / p.machine_cpu_secs.max(f64::EPSILON)),
            ratios(|p| p.latency_ms.p50),
            ratios(|p| p.latency_ms.p99),
        );
        let over = match args.rounds {
            1 => String::new(),
            n => format!(" (medians of {n} rounds)"),
        };
        println!(
            "orchestrated/{other}: throughput {throughput:.2}, sagas per machine CPU second {per_cpu:.2}, p50 latency {p50:.2}, p99 latency {p99:.2}{over}"
        );
        summary.insert(
            format!("orchestrated/{other}"),
            json!({ "throughput": throughput, "per_cpu_second": per_cpu, "p50": p50, "p99": p99 }),
        );
    }
    if args.rounds > 1 {
        let names: Vec<&str> = rounds[0].iter().map(|p| p.name.as_str()).collect();
        let medians: Vec<String> = names
            .iter()
            .map(|name| {
                let runs: Vec<f64> = phases
                    .iter()
                    .filter(|p| p.name == *name)
                    .map(|p| p.sagas_per_sec)
                    .collect();
                let each: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
                format!("{name} {:.0} ({})", median(runs.clone()), each.join(", "))
            })
            .collect();
        println!(
            "median sagas/s over {} rounds: {}",
            args.rounds,
            medians.join("; ")
        );
    }
    if let Some(path) = &args.json {
        let raw = json!({
            "date": chrono::Utc::now().to_rfc3339(),
            "cores": cores,
            "memory_gib": memory_gib,
            "sagas": args.sagas,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "mix": args.mix,
            "rounds": args.rounds,
            "phases": phases,
            "median_ratios": summary,
        });
        std::fs::write(path, serde_json::to_string_pretty(&raw)?)?;
    }

    for service in services.iter_mut().chain(&mut candidate) {
        service.kill().await;
    }
    pool.close().await;
    cluster.stop().await
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()?)
}

/// A fresh database (on a private PostgreSQL unless one is given) and the
/// three participants, running; the orchestrator is started by the caller.
struct Cluster {
    bin_dir: PathBuf,
    logs: PathBuf,
    private: Option<pglocal::PrivatePostgres>,
    admin: PgPool,
    name: String,
    db_url: String,
    /// flights-svc, cars-svc, payments-svc.
    urls: Vec<String>,
    participants: Vec<Service>,
}

impl Cluster {
    async fn start(args: &Args, client: &reqwest::Client) -> anyhow::Result<Self> {
        let bin_dir = testkit::procs::service_bin_dir(args.bin_dir.as_deref())?;
        let logs = std::env::temp_dir().join(format!("bench-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;

        let mut private = None;
        let server = match &args.database_url {
            Some(url) => url.clone(),
            None => {
                let pg = tokio::task::spawn_blocking(|| {
                    pglocal::PrivatePostgres::start(pglocal::Durability::Durable)
                })
                .await??;
                let url = pg.url().to_owned();
                private = Some(pg);
                url
            }
        };
        let name = format!("bench_{}", std::process::id());
        let admin = PgPool::connect(&server).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        let mut db_url = url::Url::parse(&server)?;
        db_url.set_path(&name);
        let db_url = db_url.to_string();

        let mut participants = Vec::new();
        let mut urls = Vec::new();
        for bin in ["flights-svc", "cars-svc", "payments-svc"] {
            let port = free_port()?;
            let url = format!("http://127.0.0.1:{port}");
            let mut service = Service::new(
                &bin_dir,
                bin,
                bin.to_owned(),
                url.clone(),
                vec![
                    ("DATABASE_URL".into(), db_url.clone()),
                    ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
                ],
                &logs,
            );
            service.start()?;
            service.wait_ready(client, Duration::from_secs(30)).await?;
            urls.push(url);
            participants.push(service);
        }
        Ok(Self {
            bin_dir,
            logs,
            private,
            admin,
            name,
            db_url,
            urls,
            participants,
        })
    }

    /// The orchestrator on `port` (not started), with `--orchestrator-env`
    /// and then `extra` (which wins) on top of the defaults.
    fn orchestrator(
        &self,
        args: &Args,
        port: u16,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        self.orchestrator_in(&self.bin_dir, "orchestrator", args, port, extra)
    }

    /// The same, from the binary in `bin_dir`, named `name` in the report.
    fn orchestrator_in(
        &self,
        bin_dir: &std::path::Path,
        name: &str,
        args: &Args,
        port: u16,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let mut env = vec![
            ("DATABASE_URL".into(), self.db_url.clone()),
            ("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
            ("FLIGHTS_URL".into(), self.urls[0].clone()),
            ("CARS_URL".into(), self.urls[1].clone()),
            ("PAYMENTS_URL".into(), self.urls[2].clone()),
            ("TRIP_WAIT_SECS".into(), "60".into()),
        ];
        for pair in &args.orchestrator_env {
            let (k, v) = pair
                .split_once('=')
                .context("--orchestrator-env takes NAME=VALUE")?;
            env.push((k.to_owned(), v.to_owned()));
        }
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Ok(Service::new(
            bin_dir,
            "orchestrator",
            name.to_owned(),
            format!("http://127.0.0.1:{port}"),
            env,
            &self.logs,
        ))
    }

    /// A database of its own for the candidate orchestrator (`<name>_candidate`),
    /// on the same server; its URL.
    async fn candidate_database(&self) -> anyhow::Result<String> {
        let name = format!("{}_candidate", self.name);
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&self.admin)
            .await?;
        let mut url = url::Url::parse(&self.db_url)?;
        url.set_path(&name);
        Ok(url.to_string())
    }

    /// Kills what is left of the participants, drops the databases, stops the
    /// private PostgreSQL and removes the logs.
    async fn stop(mut self) -> anyhow::Result<()> {
        for service in &mut self.participants {
            service.kill().await;
        }
        for db in [self.name.clone(), format!("{}_candidate", self.name)] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .execute(&self.admin)
            .await?;
        }
        self.admin.close().await;
        if let Some(pg) = self.private {
            tokio::task::spawn_blocking(move || pg.stop()).await?;
        }
        let _ = std::fs::remove_dir_all(&self.logs);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Through the orchestrator.
    Orchestrated,
    /// Through the `--candidate-*` orchestrator.
    Candidate,
    /// The same five participant calls made directly.
    Floor,
    /// The same saga on Restate.
    Restate,
}

struct Load<'a> {
    args: &'a Args,
    client: &'a reqwest::Client,
    orchestrator: &'a str,
    participants: &'a [String],
    restate: Option<&'a restate::Restate>,
    /// With `--webhooks`: the receiver, and the database of the phase's
    /// orchestrator, whose outbox a phase waits to see drained.
    webhooks: Option<(&'a webhooks::Receiver, &'a PgPool)>,
}

/// Latencies of the sagas that completed, and the number that did not.
struct Outcome {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Load<'_> {
    async fn run(&self, tag: &str, n: usize, kind: Kind) -> Outcome {
        let errors = AtomicUsize::new(0);
        let started = Instant::now();
        let one = |i: usize| {
            let errors = &errors;
            async move {
                let trip_id = format!("{tag}-{i}");
                let run_type = if self.args.mix == "all" {
                    common::wire::RunType::ALL[i % 6].as_str()
                } else {
                    "success"
                };
                let start = Instant::now();
                let ok = match kind {
                    Kind::Orchestrated | Kind::Candidate => {
                        self.orchestrated(&trip_id, run_type).await
                    }
                    Kind::Floor => self.floor(&trip_id, run_type).await,
                    Kind::Restate => match self.restate {
                        Some(peer) => peer.saga(self.client, &trip_id, run_type).await,
                        None => false,
                    },
                };
                if ok {
                    Some(start.elapsed())
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        };
        let latencies: Vec<Duration> = if self.args.rate > 0 {
            let gap = Duration::from_secs_f64(1.0 / self.args.rate as f64);
            let ticks = futures::stream::iter(0..n).then(|i| async move {
                tokio::time::sleep_until(started + gap * u32::try_from(i).unwrap_or(u32::MAX))
                    .await;
                i
            });
            ticks
                .map(one)
                .buffer_unordered(usize::MAX)
                .filter_map(|l| async move { l })
                .collect()
                .await
        } else {
            futures::stream::iter(0..n)
                .map(one)
                .buffer_unordered(self.args.concurrency.max(1))
                .filter_map(|l| async move { l })
                .collect()
                .await
        };
        Outcome {
            latencies,
            errors: errors.into_inner(),
            elapsed: started.elapsed(),
        }
    }

    async fn orchestrated(&self, trip_id: &str, run_type: &str) -> bool {
        let wait = if self.args.no_wait { 0 } else { 60 };
        let answer = self
            .client
            .post(format!("{}/trips?wait={wait}", self.orchestrator))
            .json(&json!({ "trip_id": trip_id, "run_type": run_type }))
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 202 && self.args.no_wait => true,
            Ok(r) if r.status() == 200 => r
                .json::<Value>()
                .await
                .is_ok_and(|saga| matches!(saga["status"].as_str(), Some("succeeded" | "failed"))),
            _ => false,
        }
    }

    async fn call(&self, url: String, key: String, body: Value) -> Option<Value> {
        let answer = self
            .client
            .post(url)
            .header(common::wire::IDEMPOTENCY_KEY, key)
            .json(&body)
            .send()
            .await
            .ok()?;
        if !answer.status().is_success() {
            return None;
        }
        answer.json().await.ok()
    }

    /// The five forward calls of a saga, made directly, as the orchestrator
    /// makes them (with idempotency keys). A business failure ends the trip.
    async fn floor(&self, trip_id: &str, run_type: &str) -> bool {
        let [flights, cars, payments] = [
            &self.participants[0],
            &self.participants[1],
            &self.participants[2],
        ];
        let key = |step: &str| format!("{trip_id}:{step}");
        let Some(flight) = self
            .call(
                format!("{flights}/reservations"),
                key("ReserveFlight"),
                json!({ "trip_id": trip_id, "depart_city": "Detroit", "depart_time": "2021-07-07T06:00:00Z",
                        "arrive_city": "Frankfurt", "arrive_time": "2021-07-09T08:00:00Z", "run_type": run_type }),
            )
            .await
        else {
            return run_type != "success";
        };
        let Some(car) = self
            .call(
                format!("{cars}/rentals"),
                key("ReserveCarRental"),
                json!({ "trip_id": trip_id, "rental": "BMW", "rental_from": "2021-07-09T00:00:00Z",
                        "rental_to": "2021-07-17T00:00:00Z", "run_type": run_type }),
            )
            .await
        else {
            return run_type != "success";
        };
        let charged = self
            .call(
                format!("{payments}/payments"),
                key("ProcessPayment"),
                json!({ "trip_id": trip_id, "amount": "750.00", "currency": "USD",
                        "flight_booking_id": flight["booking_id"], "car_booking_id": car["booking_id"], "run_type": run_type }),
            )
            .await;
        if charged.is_none() {
            return run_type != "success";
        }
        let confirmed = self
            .call(
                format!("{flights}/reservations/{trip_id}/confirm"),
                key("ConfirmFlight"),
                json!({ "booking_id": flight["booking_id"], "run_type": run_type }),
            )
            .await;
        if confirmed.is_none() {
            return run_type != "success";
        }
        self.call(
            format!("{cars}/rentals/{trip_id}/confirm"),
            key("ConfirmCarRental"),
            json!({ "booking_id": car["booking_id"], "run_type": run_type }),
        )
        .await
        .is_some()
            || run_type != "success"
    }
}

/// CPU seconds used so far by every process named `comm` (the PostgreSQL
/// server processes), and by this process (the load generator).
fn cpu_of(comm: &str) -> f64 {
    let hz = 100.0;
    let ticks = |stat: &str| -> Option<u64> {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    if comm == "self" {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        return ticks(&stat).unwrap_or(0) as f64 / hz;
    }
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat.contains(&format!("({comm})")) {
            total += ticks(&stat).unwrap_or(0);
        }
    }
    total as f64 / hz
}

/// Inserts `n` finished sagas with five log rows each, in chunks, then
/// analyzes the tables.
async fn preload(pool: &PgPool, n: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let chunk: i64 = 100_000;
    let n = i64::try_from(n)?;
    let mut from = 0;
    while from < n {
        let to = (from + chunk).min(n);
        sqlx::query(
            "INSERT INTO orchestrator.sagas
                 (saga_id, definition, status, definition_version, cursor, input, version,
                  created_at, updated_at)
             SELECT 'preload-' || g, 'travel', 'succeeded', 1, -1, '{\"run_type\": \"success\"}', 5,
                    now() - interval '1 day', now() - interval '1 day'
             FROM generate_series($1::int8, $2::int8 - 1) g",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO orchestrator.saga_log (saga_id, seq, step, status, attempt, detail, at)
             SELECT 'preload-' || g, s, 'ReserveFlight', 'succeeded', 1, '{}', now() - interval '1 day'
             FROM generate_series($1::int8, $2::int8 - 1) g, generate_series(1, 5) s",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to;
    }
    sqlx::query("ANALYZE orchestrator.sagas")
        .execute(pool)
        .await?;
    sqlx::query("ANALYZE orchestrator.saga_log")
        .execute(pool)
        .await?;
    println!(
        "preloaded {n} finished sagas in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Machine CPU seconds so far, all cores (from /proc/stat).
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .next()
        .map(|cpu| {
            cpu.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4) // idle, iowait
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    busy as f64 / 100.0
}

/// PostgreSQL's counters a phase reports the growth of.
#[derive(Debug, Clone, Copy)]
struct PgCounters {
    /// Transactions of the bench's database.
    xacts: i64,
    /// WAL flushes and bytes, the whole server's.
    wal_syncs: i64,
    wal_bytes: f64,
}

async fn pg_counters(pool: &PgPool, db: &str) -> anyhow::Result<PgCounters> {
    let (xacts, wal_syncs, wal_bytes): (i64, i64, f64) = sqlx::query_as(
        "SELECT (SELECT sum(xact_commit + xact_rollback)::int8 FROM pg_stat_database
                 WHERE datname IN ($1, $1 || '_candidate')),
                wal_sync, wal_bytes::float8
         FROM pg_stat_wal",
    )
    .bind(db)
    .fetch_one(pool)
    .await?;
    Ok(PgCounters {
        xacts,
        wal_syncs,
        wal_bytes,
    })
}

/// One phase of `kind`: a warm-up run, not measured, then N sagas measured.
async fn measure(
    load: &Load<'_>,
    services: &[&Service],
    pool: &PgPool,
    db: &str,
    kind: Kind,
    round: u32,
) -> anyhow::Result<Phase> {
    let name = match kind {
        Kind::Orchestrated => "orchestrated",
        Kind::Candidate => "candidate",
        Kind::Floor => "floor",
        Kind::Restate => "restate",
    };
    // Warmed up first, not measured.
    let warmup = round_tag(&format!("warmup-{name}"), round);
    load.run(&warmup, load.args.warmup, kind).await;
    let drained = async || match load.webhooks {
        Some((_, outbox)) => webhooks::drained(outbox).await,
        None => Ok(()),
    };
    let received = || load.webhooks.map_or(0, |(receiver, _)| receiver.received());
    drained().await?;
    let received_before = received();
    let before: Vec<_> = services
        .iter()
        .map(|s| s.usage().unwrap_or_default())
        .collect();
    // pg_stat_database is updated when a backend reports; give it a moment.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pg_before = pg_counters(pool, db).await?;
    let cpu_before = machine_cpu();
    let extra_before = [cpu_of("postgres"), cpu_of("self")];
    let sampling = load.args.no_wait && matches!(kind, Kind::Orchestrated | Kind::Candidate);
    let in_flight = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orchestrator.sagas WHERE status IN ('running', 'compensating')",
        )
        .fetch_one(pool)
        .await
    };
    let mut peak_in_flight = 0;
    let tag = round_tag(name, round);
    let run = load.run(&tag, load.args.sagas, kind);
    tokio::pin!(run);
    let mut outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            () = tokio::time::sleep(Duration::from_millis(100)), if sampling => {
                peak_in_flight = peak_in_flight.max(in_flight().await?);
            }
        }
    };
    if sampling {
        let started = Instant::now() - outcome.elapsed;
        loop {
            let unfinished = in_flight().await?;
            peak_in_flight = peak_in_flight.max(unfinished);
            if unfinished == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcome.elapsed = started.elapsed();
    }
    if load.webhooks.is_some() {
        // The phase ends when its notifications have been delivered too.
        let started = Instant::now() - outcome.elapsed;
        drained().await?;
        outcome.elapsed = started.elapsed();
    }
    let cpu_after = machine_cpu();
    let extra_after = [cpu_of("postgres"), cpu_of("self")];
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pg_after = pg_counters(pool, db).await?;
    let mut processes: Vec<(String, f64, f64)> = services
        .iter()
        .zip(before)
        .map(|(s, (cpu0, _))| {
            let (cpu1, rss) = s.usage().unwrap_or_default();
            (s.name.clone(), cpu1 - cpu0, rss as f64 / 1e6)
        })
        .collect();
    processes.push(("postgres".into(), extra_after[0] - extra_before[0], 0.0));
    processes.push((
        "load generator".into(),
        extra_after[1] - extra_before[1],
        0.0,
    ));
    let mut latencies = outcome.latencies;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let done = latencies.len();
    let per = load.args.sagas.max(1) as f64;
    Ok(Phase {
        name: name.into(),
        round,
        sagas: done,
        errors: outcome.errors,
        seconds: outcome.elapsed.as_secs_f64(),
        sagas_per_sec: done as f64 / outcome.elapsed.as_secs_f64(),
        latency_ms: Latency {
            p50: pct(0.50),
            p95: pct(0.95),
            p99: pct(0.99),
            max: pct(1.0),
        },
        // The two stats reads are transactions too.
        pg_xacts_per_saga: (pg_after.xacts - pg_before.xacts - 1) as f64 / per,
        pg_wal_syncs_per_saga: (pg_after.wal_syncs - pg_before.wal_syncs) as f64 / per,
        pg_wal_kb_per_saga: (pg_after.wal_bytes - pg_before.wal_bytes) / 1e3 / per,
        processes,
        machine_cpu_secs: cpu_after - cpu_before,
        peak_in_flight,
        webhooks_received: received() - received_before,
    })
}

/// The prefix of a phase's trip ids: those of a later round must not meet
/// those of an earlier one.
fn round_tag(name: &str, round: u32) -> String {
    match round {
        1 => name.to_owned(),
        _ => format!("{name}-r{round}"),
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
