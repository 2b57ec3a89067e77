//! `bench --recovery N`: how long a restarted orchestrator takes to finish
//! the sagas a `kill -9` left unfinished.
//!
//! 1. The cluster as for the other phases, and an orchestrator with a fixed
//!    `ORCHESTRATOR_ID` that drives slowly (one call in flight per
//!    participant, and attempts of 9 s, so that waiting for that one slot
//!    does not fail a step before the kill; the lease stays the default), so
//!    that sagas pile up unfinished.
//! 2. N `success` trips started with `POST /trips?wait=0` (202 at once), 256
//!    at a time; as soon as the last is accepted, SIGKILL. The sagas then
//!    unfinished are counted in the database.
//! 3. The same `ORCHESTRATOR_ID` started again with the normal settings (it
//!    reclaims its own sagas at start-up without waiting for their leases),
//!    timed from the spawn until no saga is unfinished; also until `/readyz`
//!    answers and until every saga has been claimed, with the orchestrator's
//!    CPU and peak RSS.
//! 4. The consistency invariant, and every saga `succeeded`.
//!
//! `BENCH_RECOVERY_TIMEOUT_SECS` (default 120): how long the restarted
//! orchestrator gets before the run counts as failed.
//! `BENCH_RECOVERY_RESTART_ID`: restart with this `ORCHESTRATOR_ID` instead
//! (a stand-in process: it waits for the leases to run out, then claims
//! through its recovery loop), to compare.

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use testkit::procs::{Service, free_port};
use tokio::time::Instant;

use crate::{Args, Cluster, cpu_of, machine_cpu, pg_counters};

/// The identity both orchestrator processes run with.
const ORCHESTRATOR_ID: &str = "bench-orchestrator";
/// Trips posted at once.
const CONCURRENCY: usize = 256;
/// How long the restarted orchestrator gets to finish every saga, by default.
const TIMEOUT_SECS: u64 = 120;

/// The figures of one run.
#[derive(Debug, Serialize)]
struct Recovery {
    summary: String,
    sagas: usize,
    post_errors: usize,
    /// How long posting the N trips took, to the last 202.
    post_secs: f64,
    unfinished_at_kill: i64,
    /// Unfinished sagas at the kill by status and step index (`cursor`).
    at_kill: Vec<(String, i32, i64)>,
    /// From the spawn of the new process: `/readyz` answers 200.
    ready_secs: Option<f64>,
    /// Every unfinished saga has been claimed (committed).
    all_claimed_secs: Option<f64>,
    /// The first saga has finished.
    first_finished_secs: Option<f64>,
    /// Half of them have finished.
    half_finished_secs: Option<f64>,
    /// All have finished (`None`: not within the timeout).
    all_finished_secs: Option<f64>,
    still_unfinished: i64,
    /// Sagas finished per second, from the spawn to the last.
    sagas_per_sec: f64,
    /// Unfinished sagas at each whole second after the spawn.
    unfinished_by_second: Vec<i64>,
    /// `retrying` log rows written during recovery, by error.
    retries: Vec<(String, i64)>,
    orchestrator_cpu_secs: f64,
    orchestrator_peak_rss_mb: f64,
    /// The first (killed) process's peak RSS.
    killed_orchestrator_peak_rss_mb: f64,
    postgres_cpu_secs: f64,
    machine_cpu_secs: f64,
    pg_xacts: i64,
    succeeded: usize,
    failed: usize,
    /// No saga inconsistent, no orphan, none unfinished.
    invariant_clean: bool,
    inconsistent: usize,
    orphans: usize,
    invariant_findings: Vec<String>,
    /// The orchestrators' warnings and errors, by message, most first.
    orchestrator_log: Vec<(String, usize)>,
    /// The log of one failed saga, if any failed.
    a_failed_saga: Vec<String>,
}

/// Runs the recovery measurement; fails if the invariant is broken, a saga
/// did not succeed, or sagas are left unfinished after the timeout.
pub async fn run(args: &Args, n: usize) -> anyhow::Result<()> {
    let client = crate::http_client()?;
    let cluster = Cluster::start(args, &client).await?;
    let measured = measure(args, n, &client, &cluster).await;
    cluster.stop().await?;
    let recovery = measured?;

    println!("{}", recovery.summary);
    let at_kill: Vec<String> = recovery
        .at_kill
        .iter()
        .map(|(status, cursor, count)| format!("{status} at step {cursor}: {count}"))
        .collect();
    println!(
        "posted {} trips in {:.1} s ({} errors); unfinished at the kill: {}",
        recovery.sagas,
        recovery.post_secs,
        recovery.post_errors,
        at_kill.join(", ")
    );
    let secs = |s: Option<f64>| s.map_or("never".to_owned(), |s| format!("{s:.2} s"));
    println!(
        "after the spawn: ready {}, all claimed {}, first finished {}, half {}, all {}; {:.0} sagas/s",
        secs(recovery.ready_secs),
        secs(recovery.all_claimed_secs),
        secs(recovery.first_finished_secs),
        secs(recovery.half_finished_secs),
        secs(recovery.all_finished_secs),
        recovery.sagas_per_sec
    );
    println!(
        "unfinished at each second: {:?}",
        recovery.unfinished_by_second
    );
    println!(
        "orchestrator {:.1} CPU s / {:.0} MB peak (killed one: {:.0} MB); postgres {:.1} CPU s; \
         machine {:.1} CPU s; {} PG transactions; retries during recovery: {:?}",
        recovery.orchestrator_cpu_secs,
        recovery.orchestrator_peak_rss_mb,
        recovery.killed_orchestrator_peak_rss_mb,
        recovery.postgres_cpu_secs,
        recovery.machine_cpu_secs,
        recovery.pg_xacts,
        recovery.retries
    );
    for finding in recovery.invariant_findings.iter().take(10) {
        println!("  {finding}");
    }
    if !recovery.orchestrator_log.is_empty() {
        println!("orchestrator warnings and errors:");
        for (message, count) in recovery.orchestrator_log.iter().take(8) {
            println!("  {count:>6} x {message}");
        }
    }
    if !recovery.a_failed_saga.is_empty() {
        println!("a failed saga's log:");
        for row in &recovery.a_failed_saga {
            println!("  {row}");
        }
    }
    if let Some(path) = &args.json {
        let raw = json!({
            "date": chrono::Utc::now().to_rfc3339(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "recovery": recovery,
        });
        std::fs::write(path, serde_json::to_string_pretty(&raw)?)?;
    }
    anyhow::ensure!(
        recovery.invariant_clean,
        "the consistency invariant is broken"
    );
    anyhow::ensure!(
        recovery.still_unfinished == 0,
        "{} sagas still unfinished {} s after the restart",
        recovery.still_unfinished,
        timeout().as_secs()
    );
    anyhow::ensure!(
        recovery.post_errors == 0 && recovery.succeeded == n,
        "{} of {n} sagas succeeded ({} failed, {} trips not accepted)",
        recovery.succeeded,
        recovery.failed,
        recovery.post_errors
    );
    Ok(())
}

async fn measure(
    args: &Args,
    n: usize,
    client: &reqwest::Client,
    cluster: &Cluster,
) -> anyhow::Result<Recovery> {
    let pool = PgPool::connect(&cluster.db_url).await?;
    let result = phases(args, n, client, cluster, &pool).await;
    pool.close().await;
    result
}

async fn phases(
    args: &Args,
    n: usize,
    client: &reqwest::Client,
    cluster: &Cluster,
    pool: &PgPool,
) -> anyhow::Result<Recovery> {
    // 1. A slow orchestrator: one call in flight per participant, and
    // attempts (hence a wait for that one slot) long enough that no step
    // fails for waiting before the kill; 9 s keeps the default lease valid
    // (it must exceed two attempts and the longest retry delay).
    // It takes every trip (MAX_ACTIVE_SAGAS), so that all N are in flight
    // at the kill; the restarted one has the default slots.
    let port = free_port()?;
    let slots = n.to_string();
    let mut slow = cluster.orchestrator(
        args,
        port,
        &[
            ("ORCHESTRATOR_ID", ORCHESTRATOR_ID),
            ("PARTICIPANT_MAX_IN_FLIGHT", "1"),
            ("ATTEMPT_TIMEOUT_MS", "9000"),
            ("MAX_ACTIVE_SAGAS", &slots),
        ],
    )?;
    slow.start()?;
    slow.wait_ready(client, Duration::from_secs(30)).await?;

    // 2. N trips, then kill -9 at once.
    let started = Instant::now();
    let url = format!("{}/trips?wait=0", slow.url);
    let post_errors = futures::stream::iter(0..n)
        .map(|i| post(client, &url, i))
        .buffer_unordered(CONCURRENCY)
        .filter(|accepted| std::future::ready(!accepted))
        .count()
        .await;
    let post_secs = started.elapsed().as_secs_f64();
    let killed_rss = slow.usage().map_or(0.0, |(_, rss)| rss as f64 / 1e6);
    slow.kill().await;
    let unfinished_at_kill = unfinished(pool).await?;
    let at_kill: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT status::text, cursor, count(*) FROM orchestrator.sagas
         WHERE status IN ('running', 'compensating') GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let killed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    // Each unfinished saga's version at the kill: a claim bumps it, so a
    // saga whose version moved has been claimed. (A table of the bench's own
    // in its own database.)
    sqlx::query(
        "CREATE TABLE public.bench_at_kill AS
         SELECT saga_id, version FROM orchestrator.sagas WHERE status IN ('running', 'compensating')",
    )
    .execute(pool)
    .await?;

    // 3. The same identity, normal settings; timed from the spawn.
    let port = free_port()?;
    let restart_id =
        std::env::var("BENCH_RECOVERY_RESTART_ID").unwrap_or_else(|_| ORCHESTRATOR_ID.to_owned());
    let mut orchestrator = cluster.orchestrator(args, port, &[("ORCHESTRATOR_ID", &restart_id)])?;
    let xacts_before = pg_counters(pool, &cluster.name).await?.xacts;
    let cpu_before = machine_cpu();
    let pg_before = cpu_of("postgres");
    let spawn = Instant::now();
    orchestrator.start()?;
    let base = orchestrator.url.clone();
    let ready = ready_after(client, &base, spawn);
    let progress = progress(pool, &mut orchestrator, spawn, unfinished_at_kill);
    let (ready_secs, progress) = tokio::join!(ready, progress);
    let progress = progress?;
    let cpu_after = machine_cpu();
    let pg_after = cpu_of("postgres");
    let (orchestrator_cpu, rss) = orchestrator.usage().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let xacts_after = pg_counters(pool, &cluster.name).await?.xacts;
    orchestrator.kill().await;

    let retries: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(detail->>'error', 'status ' || (detail->>'status')), count(*)
         FROM orchestrator.saga_log WHERE status = 'retrying' AND at >= $1
         GROUP BY 1 ORDER BY 2 DESC",
    )
    .bind(killed_at)
    .fetch_all(pool)
    .await?;

    let orchestrator_log = log_summary(&cluster.logs.join("orchestrator.log"));
    let a_failed_saga: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s %s %s %s attempt %s: %s', l.saga_id, l.seq, l.step, l.status, l.attempt,
                       left(l.detail::text, 200))
         FROM (SELECT saga_id FROM orchestrator.sagas WHERE status = 'failed' LIMIT 1) f
         JOIN orchestrator.saga_log l USING (saga_id) ORDER BY l.seq",
    )
    .fetch_all(pool)
    .await?;

    // 4. The invariant.
    let report = testkit::invariant::check(pool).await?;
    let mut findings: Vec<String> = report.inconsistent.clone();
    findings.extend(report.orphans.iter().cloned());
    findings.extend(report.unfinished.iter().take(10).cloned());
    let invariant_clean =
        report.unfinished.is_empty() && report.inconsistent.is_empty() && report.orphans.is_empty();
    let invariant = if invariant_clean {
        "clean".to_owned()
    } else {
        format!(
            "not clean: {} unfinished, {} inconsistent, {} orphans",
            report.unfinished.len(),
            report.inconsistent.len(),
            report.orphans.len()
        )
    };
    let all_ok = invariant_clean && report.sagas == n && report.succeeded == n;

    let other = if restart_id == ORCHESTRATOR_ID {
        String::new()
    } else {
        format!(" (restarted as {restart_id})")
    };
    let summary = format!(
        "recovery{other}: {n} sagas, {unfinished_at_kill} unfinished at kill -9; restart to all finished {} \
         (ready after {}); orchestrator peak RSS {:.0} MB, {:.1} CPU s; invariant {}",
        progress.all_finished.map_or(
            format!("not within {} s", timeout().as_secs()),
            |s| format!("{s:.1} s")
        ),
        ready_secs.map_or("never".to_owned(), |s| format!("{s:.2} s")),
        rss as f64 / 1e6,
        orchestrator_cpu,
        if !invariant_clean || all_ok {
            invariant
        } else {
            format!(
                "clean, but {} of {n} sagas succeeded ({} failed)",
                report.succeeded, report.failed
            )
        }
    );
    let sagas_per_sec = progress
        .all_finished
        .map_or(0.0, |secs| unfinished_at_kill as f64 / secs);
    Ok(Recovery {
        summary,
        sagas: n,
        post_errors,
        post_secs,
        unfinished_at_kill,
        at_kill,
        ready_secs,
        all_claimed_secs: progress.all_claimed,
        first_finished_secs: progress.first_finished,
        half_finished_secs: progress.half_finished,
        all_finished_secs: progress.all_finished,
        still_unfinished: progress.still_unfinished,
        sagas_per_sec,
        unfinished_by_second: progress.by_second,
        retries,
        orchestrator_cpu_secs: orchestrator_cpu,
        orchestrator_peak_rss_mb: rss as f64 / 1e6,
        killed_orchestrator_peak_rss_mb: killed_rss,
        postgres_cpu_secs: pg_after - pg_before,
        machine_cpu_secs: cpu_after - cpu_before,
        pg_xacts: xacts_after - xacts_before - 1,
        succeeded: report.succeeded,
        failed: report.failed,
        invariant_clean,
        inconsistent: report.inconsistent.len(),
        orphans: report.orphans.len(),
        invariant_findings: findings,
        orchestrator_log,
        a_failed_saga,
    })
}

/// Posts trip `i` (`success`, `wait=0`); `true` once it is accepted. A
/// failed request is sent again (the same trip id joins the same saga).
async fn post(client: &reqwest::Client, url: &str, i: usize) -> bool {
    let body = json!({ "trip_id": format!("recovery-{i}"), "run_type": "success" });
    for _ in 0..3 {
        let answer = client.post(url).json(&body).send().await;
        if answer.is_ok_and(|r| r.status() == 202 || r.status() == 200) {
            return true;
        }
    }
    false
}

async fn unfinished(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM orchestrator.sagas WHERE status IN ('running', 'compensating')",
    )
    .fetch_one(pool)
    .await
}

/// How long the restarted orchestrator gets to finish every saga.
fn timeout() -> Duration {
    let secs = std::env::var("BENCH_RECOVERY_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TIMEOUT_SECS);
    Duration::from_secs(secs)
}

/// Seconds from `spawn` until `/readyz` answers 200 (`None`: not within
/// the timeout).
async fn ready_after(client: &reqwest::Client, base: &str, spawn: Instant) -> Option<f64> {
    while spawn.elapsed() < timeout() {
        let ready = client
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Some(spawn.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// When the sagas were claimed and finished, seconds from the spawn.
struct Progress {
    all_claimed: Option<f64>,
    first_finished: Option<f64>,
    half_finished: Option<f64>,
    all_finished: Option<f64>,
    still_unfinished: i64,
    by_second: Vec<i64>,
}

/// Polls the database every 25 ms until no saga is unfinished or
/// the timeout has passed.
async fn progress(
    pool: &PgPool,
    orchestrator: &mut Service,
    spawn: Instant,
    at_kill: i64,
) -> anyhow::Result<Progress> {
    let mut progress = Progress {
        all_claimed: None,
        first_finished: None,
        half_finished: None,
        all_finished: None,
        still_unfinished: at_kill,
        by_second: Vec::new(),
    };
    loop {
        // Still unfinished, and of those not claimed yet (still at the
        // version of the kill).
        let (left, unclaimed): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE s.version = k.version)
             FROM orchestrator.sagas s JOIN public.bench_at_kill k USING (saga_id)
             WHERE s.status IN ('running', 'compensating')",
        )
        .fetch_one(pool)
        .await?;
        let at = spawn.elapsed();
        let secs = at.as_secs_f64();
        while progress.by_second.len() <= at.as_secs() as usize {
            progress.by_second.push(left);
        }
        progress.still_unfinished = left;
        if unclaimed == 0 && progress.all_claimed.is_none() {
            progress.all_claimed = Some(secs);
        }
        if left < at_kill && progress.first_finished.is_none() {
            progress.first_finished = Some(secs);
        }
        if left * 2 <= at_kill && progress.half_finished.is_none() {
            progress.half_finished = Some(secs);
        }
        if left == 0 {
            progress.all_finished = Some(secs);
            return Ok(progress);
        }
        if at > timeout() {
            return Ok(progress);
        }
        if !orchestrator.is_running() {
            anyhow::bail!("the restarted orchestrator exited; see its log");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The WARN and ERROR lines of a service log, by message (the text between
/// the level and the fields, and the `err` field if any), most first.
fn log_summary(path: &std::path::Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for line in text.lines() {
        let line = strip_ansi(line);
        let Some((_, rest)) = line
            .split_once(" WARN ")
            .or_else(|| line.split_once(" ERROR "))
        else {
            continue;
        };
        let mut message: Vec<&str> = rest
            .split_whitespace()
            .take_while(|word| !word.contains('='))
            .collect();
        if let Some((_, err)) = rest.split_once(" err=") {
            message.push("err=");
            message.push(err);
        }
        let message: String = message.join(" ").chars().take(200).collect();
        *counts.entry(message).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// `line` without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
