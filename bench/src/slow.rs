//! `bench --slow-participant`: starts arrive at a constant rate (open loop,
//! as in `--open-loop`) while payments-svc, behind a fault proxy, answers
//! every call only after a second and a share of them with 503, then
//! recovers. Second by second it reports what the clients saw (good answers,
//! refusals, timeouts) and what the participant saw (calls, connections,
//! calls in flight, retries), then how long after the recovery the goodput
//! was back at its level before the slowdown, and the orchestrator's peak
//! memory.

use std::time::{Duration, SystemTime};

use faultproxy::{FaultProxy, Faults};
use serde::Serialize;
use sqlx::PgPool;
use testkit::procs::Service;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::open_loop::{Answer, CLIENT_TIMEOUT, clients, start};

/// Seconds of each phase: normal, slow, recovered.
const NORMAL_SECS: u64 = 10;
const SLOW_SECS: u64 = 20;
const AFTER_SECS: u64 = 20;
/// How slow the participant is, and the share of its calls it fails.
const SLOW_MS: u64 = 1_000;
const SLOW_UNAVAILABLE_RATE: f64 = 0.1;
/// Goodput is back when a second's reaches this share of the level before.
const BACK_SHARE: f64 = 0.9;

/// One second of the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Second {
    pub phase: &'static str,
    /// Answers that arrived in this second, by kind.
    pub good: usize,
    pub shed: usize,
    pub timed_out: usize,
    pub failed: usize,
    /// Calls that reached the participant in this second, and the retries
    /// (failed attempts logged to be tried again) among the sagas' rows.
    pub participant_calls: u64,
    pub retries_logged: i64,
    /// TCP connections open to the participant (through the proxy), as
    /// sampled in this second.
    pub connections: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rate_per_sec: f64,
    pub slow_ms: u64,
    pub slow_unavailable_rate: f64,
    pub seconds: Vec<Second>,
    /// The median goodput per second before the slowdown (its first two
    /// seconds left out), during it, and after the recovery.
    pub goodput_before: f64,
    pub goodput_slow: f64,
    pub goodput_after: f64,
    /// From the recovery to the end of the first second whose goodput was
    /// back at `BACK_SHARE` of the level before; None if it never was.
    pub back_to_peak_secs: Option<f64>,
    pub peak_connections: usize,
    pub peak_calls_in_flight: u64,
    /// Retries and calls per second to the participant while slow.
    pub retries_per_sec_slow: f64,
    pub calls_per_sec_slow: f64,
    pub orchestrator_peak_rss_mb: f64,
    pub sagas_created: i64,
    pub sagas_late: i64,
}

fn phase(second: u64) -> &'static str {
    if second < NORMAL_SECS {
        "normal"
    } else if second < NORMAL_SECS + SLOW_SECS {
        "slow"
    } else {
        "after"
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The TCP connections established to `port` on this machine, from
/// `/proc/net/tcp` (the proxy's side of each).
fn connections_to(port: u16) -> usize {
    let local = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local_address = fields.nth(1).unwrap_or_default();
            let state = fields.nth(1).unwrap_or_default();
            local_address.ends_with(&local) && state == "01"
        })
        .count()
}

/// Runs the three phases at `rate` starts per second against the
/// orchestrator at `orchestrator_url`, whose payments calls go through
/// `proxy`.
pub async fn run(
    orchestrator_url: &str,
    rate: f64,
    orchestrator: &Service,
    proxy: &FaultProxy,
    pool: &PgPool,
) -> anyhow::Result<Report> {
    let (client, url) = clients(orchestrator_url)?;
    let proxy_port: u16 = proxy.url.rsplit(':').next().unwrap_or_default().parse()?;
    let total_secs = NORMAL_SECS + SLOW_SECS + AFTER_SECS;
    let total = (rate * total_secs as f64).round() as usize;
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    orchestrator.reset_peak_memory();
    let wall_t0 = SystemTime::now();
    let t0 = Instant::now();

    // Once a second: switch the faults at the phase edges, and sample the
    // participant's calls and connections.
    let sampler = {
        let stats = proxy.stats();
        let mut samples = Vec::new();
        let mut last_calls = stats.requests.load(std::sync::atomic::Ordering::Relaxed);
        let slow = Faults {
            delay_rate: 1.0,
            min_delay_ms: SLOW_MS,
            max_delay_ms: SLOW_MS,
            unavailable_rate: SLOW_UNAVAILABLE_RATE,
            ..Faults::default()
        };
        async move {
            for second in 0..total_secs {
                if second == NORMAL_SECS {
                    proxy.set_faults(slow.clone());
                } else if second == NORMAL_SECS + SLOW_SECS {
                    proxy.set_faults(Faults::default());
                }
                let mut peak = 0;
                // Connections sampled a few times in the second.
                for quarter in 1..=4 {
                    tokio::time::sleep_until(
                        t0 + Duration::from_millis(second * 1_000 + quarter * 250),
                    )
                    .await;
                    peak = peak.max(connections_to(proxy_port));
                }
                let calls = stats.requests.load(std::sync::atomic::Ordering::Relaxed);
                samples.push((calls - last_calls, peak));
                last_calls = calls;
            }
            samples
        }
    };
    let load = async {
        let mut answers = JoinSet::new();
        for i in 0..total {
            let intended = t0 + gap.mul_f64(i as f64);
            tokio::time::sleep_until(intended).await;
            let (client, url) = (client.clone(), std::sync::Arc::clone(&url));
            answers.spawn(async move {
                let answer = start(&client, &url, &format!("slow-{i}"), intended).await;
                (t0.elapsed(), answer)
            });
        }
        answers.join_all().await
    };
    let (samples, answers) = tokio::join!(sampler, load);

    let mut seconds: Vec<Second> = (0..total_secs)
        .map(|s| Second {
            phase: phase(s),
            ..Second::default()
        })
        .collect();
    for (at, answer) in answers {
        let Some(second) = seconds.get_mut(at.as_secs() as usize) else {
            continue;
        };
        match answer {
            Answer::Good(_) => second.good += 1,
            Answer::Shed(_) => second.shed += 1,
            Answer::TimedOut => second.timed_out += 1,
            Answer::Failed(_) => second.failed += 1,
        }
    }
    for (second, (calls, connections)) in seconds.iter_mut().zip(samples) {
        second.participant_calls = calls;
        second.connections = connections;
    }
    // Every saga of the run ends before its rows are counted.
    let unfinished = async || -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orchestrator.sagas
             WHERE saga_id LIKE 'slow-%' AND status IN ('running', 'compensating')",
        )
        .fetch_one(pool)
        .await?)
    };
    while unfinished().await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0_epoch = wall_t0
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs_f64();
    let retries: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT floor(extract(epoch FROM at) - $1)::bigint AS second, count(*)
         FROM orchestrator.saga_log
         WHERE saga_id LIKE 'slow-%' AND status = 'retrying'
           AND step IN ('ProcessPayment', 'RefundPayment') AND detail ? 'status'
         GROUP BY 1",
    )
    .bind(t0_epoch)
    .fetch_all(pool)
    .await?;
    for (second, count) in retries {
        if let Some(s) = usize::try_from(second)
            .ok()
            .and_then(|s| seconds.get_mut(s))
        {
            s.retries_logged = count;
        }
    }
    let (created, late): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE updated_at - created_at > interval '5 s')
         FROM orchestrator.sagas WHERE saga_id LIKE 'slow-%'",
    )
    .fetch_one(pool)
    .await?;

    let goodput = |phase_name: &str, skip: usize| {
        median(
            seconds
                .iter()
                .filter(|s| s.phase == phase_name)
                .skip(skip)
                .map(|s| s.good as f64)
                .collect(),
        )
    };
    let goodput_before = goodput("normal", 2);
    let recovered_at = NORMAL_SECS + SLOW_SECS;
    let back_to_peak_secs = seconds
        .iter()
        .enumerate()
        .skip(recovered_at as usize)
        .find(|(_, s)| s.good as f64 >= BACK_SHARE * goodput_before)
        .map(|(i, _)| (i + 1) as f64 - recovered_at as f64);
    let slow: Vec<&Second> = seconds.iter().filter(|s| s.phase == "slow").collect();
    let per_slow_sec =
        |f: fn(&Second) -> f64| slow.iter().map(|s| f(s)).sum::<f64>() / SLOW_SECS as f64;
    Ok(Report {
        rate_per_sec: rate,
        slow_ms: SLOW_MS,
        slow_unavailable_rate: SLOW_UNAVAILABLE_RATE,
        goodput_before,
        goodput_slow: goodput("slow", 0),
        goodput_after: goodput("after", 0),
        back_to_peak_secs,
        peak_connections: seconds.iter().map(|s| s.connections).max().unwrap_or(0),
        peak_calls_in_flight: proxy
            .stats()
            .peak_in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        retries_per_sec_slow: per_slow_sec(|s| s.retries_logged as f64),
        calls_per_sec_slow: per_slow_sec(|s| s.participant_calls as f64),
        orchestrator_peak_rss_mb: orchestrator
            .usage()
            .map_or(0.0, |(_, rss)| rss as f64 / 1e6),
        sagas_created: created,
        sagas_late: late,
        seconds,
    })
}

/// The run as a table, a line a second, then the summary.
pub fn print(report: &Report) {
    println!(
        "slow participant: {:.0} starts/s offered; payments-svc at {} ms a call and {:.0}% 503 from {NORMAL_SECS} s to {} s; client timeout {} s",
        report.rate_per_sec,
        report.slow_ms,
        report.slow_unavailable_rate * 100.0,
        NORMAL_SECS + SLOW_SECS,
        CLIENT_TIMEOUT.as_secs()
    );
    println!(
        "{:>4} {:>7} {:>6} {:>6} {:>9} {:>7} {:>6} {:>8} {:>6}",
        "s", "phase", "good", "shed", "timed out", "failed", "calls", "retries", "conns"
    );
    for (i, s) in report.seconds.iter().enumerate() {
        println!(
            "{i:>4} {:>7} {:>6} {:>6} {:>9} {:>7} {:>6} {:>8} {:>6}",
            s.phase,
            s.good,
            s.shed,
            s.timed_out,
            s.failed,
            s.participant_calls,
            s.retries_logged,
            s.connections
        );
    }
    println!(
        "goodput/s before {:.0}, slow {:.0}, after {:.0}; back at {:.0}% of before {} after the recovery; \
         while slow: {:.0} calls/s and {:.1} retries/s to payments; peak {} connections, {} calls in flight; \
         orchestrator peak RSS {:.0} MB; {} sagas, {} ended more than 5 s after they were created",
        report.goodput_before,
        report.goodput_slow,
        report.goodput_after,
        BACK_SHARE * 100.0,
        report
            .back_to_peak_secs
            .map_or("never".to_owned(), |s| format!("{s:.0} s")),
        report.calls_per_sec_slow,
        report.retries_per_sec_slow,
        report.peak_connections,
        report.peak_calls_in_flight,
        report.orchestrator_peak_rss_mb,
        report.sagas_created,
        report.sagas_late
    );
}
