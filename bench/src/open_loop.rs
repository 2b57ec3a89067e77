//! `bench --open-loop`: starts arrive at a constant rate whatever the
//! answers, as real clients' do, each with a client timeout, and every
//! latency is counted from the start's intended send time, so that a server
//! that stalls cannot hide the wait it causes (coordinated omission). A
//! sweep runs the rates given as multiples of the capacity measured closed
//! loop, and reports for each what a user of the cluster would see: the
//! goodput, the starts shed, the clients that gave up, the latencies of the
//! accepted starts, the sagas that ended late, the orchestrator's memory,
//! and how long after the overload the latency was back to normal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::procs::Service;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A client gives up on a start after this long.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A saga that ends later than this after it was created is late.
const LATE_AFTER_SECS: f64 = 5.0;

/// What one start came to, and when, from its intended send time.
pub enum Answer {
    /// 200, the saga succeeded, within the client timeout.
    Good(Duration),
    /// 503: refused for want of a slot.
    Shed(Duration),
    /// The client gave up (or the saga had not ended when the wait ran out).
    TimedOut,
    /// Anything else, and what.
    Failed(String),
}

/// One rate of the sweep.
#[derive(Debug, Serialize)]
pub struct Rate {
    /// The rate as a multiple of the closed-loop capacity.
    pub multiple: f64,
    pub offered_per_sec: f64,
    /// Sagas that succeeded and were answered within the client timeout,
    /// per second of the run.
    pub goodput_per_sec: f64,
    pub started: usize,
    pub good: usize,
    pub shed: usize,
    pub timed_out: usize,
    pub failed: usize,
    /// Of the good answers, from the intended send time.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The refusals' own latency.
    pub shed_p99_ms: f64,
    /// Sagas created in the run, and those that ended more than
    /// `LATE_AFTER_SECS` after they were created.
    pub sagas_created: i64,
    pub sagas_late: i64,
    pub orchestrator_peak_rss_mb: f64,
    /// From the end of the offered load until a probe saga's latency was
    /// back under the normal bound; None if it was not within 30 s.
    pub back_to_normal_secs: Option<f64>,
}

/// The whole sweep.
#[derive(Debug, Serialize)]
pub struct Sweep {
    pub capacity_per_sec: f64,
    pub closed_loop_p50_ms: f64,
    pub closed_loop_peak_rss_mb: f64,
    /// A probe is back to normal under this latency.
    pub normal_ms: f64,
    pub seconds_per_rate: f64,
    pub rates: Vec<Rate>,
}

/// The settings of a sweep.
pub struct Plan<'a> {
    pub orchestrator_url: &'a str,
    pub multiples: &'a [f64],
    pub seconds: f64,
    pub capacity: f64,
    pub closed_p50_ms: f64,
    pub closed_peak_rss_mb: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// One start, as a client with a timeout sends it; `intended` is when it
/// was meant to be sent.
pub async fn start(
    client: &reqwest::Client,
    url: &str,
    trip_id: &str,
    intended: Instant,
) -> Answer {
    let answer = client
        .post(url)
        .json(&json!({ "trip_id": trip_id }))
        .send()
        .await;
    let at = intended.elapsed();
    match answer {
        Ok(r) if r.status() == 503 => Answer::Shed(at),
        Ok(r) if r.status() == 200 => match r.json::<Value>().await {
            Ok(saga) if saga["status"] == "succeeded" && intended.elapsed() <= CLIENT_TIMEOUT => {
                Answer::Good(intended.elapsed())
            }
            Ok(saga) => Answer::Failed(format!("saga {}", saga["status"])),
            Err(_) => Answer::TimedOut,
        },
        Ok(r) if r.status() == 202 => Answer::TimedOut,
        Ok(r) => Answer::Failed(format!("status {}", r.status())),
        Err(err) if err.is_timeout() => Answer::TimedOut,
        Err(err) if err.is_connect() => Answer::Failed("cannot connect".into()),
        Err(_) => Answer::Failed("connection lost".into()),
    }
}

/// The load generator's clients (a large pool, each with the client
/// timeout) and the start URL of the orchestrator at `orchestrator_url`.
pub fn clients(orchestrator_url: &str) -> anyhow::Result<(reqwest::Client, Arc<String>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .pool_max_idle_per_host(8192)
        .build()?;
    let url = Arc::new(format!(
        "{orchestrator_url}/trips?wait={}",
        CLIENT_TIMEOUT.as_secs()
    ));
    Ok((client, url))
}

/// Runs the sweep: each rate for `plan.seconds`, then waits until its sagas
/// have all ended before the next.
pub async fn sweep(
    plan: &Plan<'_>,
    orchestrator: &Service,
    pool: &PgPool,
) -> anyhow::Result<Sweep> {
    let (client, url) = clients(plan.orchestrator_url)?;
    let normal_ms = (2.0 * plan.closed_p50_ms).max(50.0);
    let mut rates = Vec::new();
    for (n, &multiple) in plan.multiples.iter().enumerate() {
        let offered = (plan.capacity * multiple).max(1.0);
        let total = (offered * plan.seconds).round() as usize;
        let gap = Duration::from_secs_f64(1.0 / offered);
        let tag = format!("open-{n}");
        orchestrator.reset_peak_memory();
        let t0 = Instant::now();
        let mut answers = JoinSet::new();
        for i in 0..total {
            let intended = t0 + gap.mul_f64(i as f64);
            tokio::time::sleep_until(intended).await;
            let (client, url, trip_id) = (client.clone(), Arc::clone(&url), format!("{tag}-{i}"));
            answers.spawn(async move { start(&client, &url, &trip_id, intended).await });
        }
        let ended = Instant::now();
        // Probes, one at a time, while the starts still open drain.
        let probes = {
            let (client, url, tag) = (client.clone(), Arc::clone(&url), tag.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while ended.elapsed() < Duration::from_secs(30) {
                    let sent = Instant::now();
                    let trip_id = format!("{tag}-probe-{i}");
                    if let Answer::Good(latency) = start(&client, &url, &trip_id, sent).await
                        && latency.as_secs_f64() * 1e3 <= normal_ms
                    {
                        return Some(sent.duration_since(ended).as_secs_f64());
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None
            })
        };
        let (mut good, mut shed) = (Vec::new(), Vec::new());
        let mut timed_out = 0;
        let mut failures = std::collections::BTreeMap::<String, usize>::new();
        while let Some(answer) = answers.join_next().await {
            match answer.unwrap_or_else(|_| Answer::Failed("panicked".into())) {
                Answer::Good(at) => good.push(at),
                Answer::Shed(at) => shed.push(at),
                Answer::TimedOut => timed_out += 1,
                Answer::Failed(what) => *failures.entry(what).or_default() += 1,
            }
        }
        let failed = failures.values().sum();
        let back_to_normal_secs = probes.await.unwrap_or(None);
        let peak_rss = orchestrator
            .usage()
            .map_or(0.0, |(_, rss)| rss as f64 / 1e6);
        let pattern = format!("{tag}-%");
        let unfinished = async || -> anyhow::Result<i64> {
            Ok(sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM orchestrator.sagas
                 WHERE saga_id LIKE $1 AND status IN ('running', 'compensating')",
            )
            .bind(&pattern)
            .fetch_one(pool)
            .await?)
        };
        while unfinished().await? > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (created, late): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE extract(epoch FROM updated_at - created_at) > $2)
             FROM orchestrator.sagas WHERE saga_id LIKE $1",
        )
        .bind(&pattern)
        .bind(LATE_AFTER_SECS)
        .fetch_one(pool)
        .await
        .context("count the late sagas")?;
        good.sort();
        shed.sort();
        let rate = Rate {
            multiple,
            offered_per_sec: offered,
            goodput_per_sec: good.len() as f64 / plan.seconds,
            started: total,
            good: good.len(),
            shed: shed.len(),
            timed_out,
            failed,
            p50_ms: percentile(&good, 0.50),
            p99_ms: percentile(&good, 0.99),
            p999_ms: percentile(&good, 0.999),
            shed_p99_ms: percentile(&shed, 0.99),
            sagas_created: created,
            sagas_late: late,
            orchestrator_peak_rss_mb: peak_rss,
            back_to_normal_secs,
        };
        eprintln!(
            "bench: {multiple}x ({offered:.0}/s): goodput {:.0}/s, shed {}, timed out {}, p99 {:.0} ms, failed {failures:?}",
            rate.goodput_per_sec, rate.shed, rate.timed_out, rate.p99_ms
        );
        rates.push(rate);
    }
    Ok(Sweep {
        capacity_per_sec: plan.capacity,
        closed_loop_p50_ms: plan.closed_p50_ms,
        closed_loop_peak_rss_mb: plan.closed_peak_rss_mb,
        normal_ms,
        seconds_per_rate: plan.seconds,
        rates,
    })
}

/// The sweep as a table.
pub fn print(sweep: &Sweep) {
    println!(
        "open loop: capacity {:.0} sagas/s (closed loop), {} s per rate, client timeout {} s, latency from the intended send time; normal: under {:.0} ms",
        sweep.capacity_per_sec,
        sweep.seconds_per_rate,
        CLIENT_TIMEOUT.as_secs(),
        sweep.normal_ms
    );
    println!(
        "{:>5} {:>8} {:>8} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9} {:>6} {:>8} {:>9}",
        "load",
        "offered",
        "goodput",
        "shed",
        "timed out",
        "failed",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "shed p99",
        "late",
        "RSS MB",
        "normal s"
    );
    for r in &sweep.rates {
        println!(
            "{:>4}x {:>8.0} {:>8.0} {:>7} {:>9} {:>7} {:>8.0} {:>8.0} {:>9.0} {:>9.1} {:>6} {:>8.0} {:>9}",
            r.multiple,
            r.offered_per_sec,
            r.goodput_per_sec,
            r.shed,
            r.timed_out,
            r.failed,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.shed_p99_ms,
            r.sagas_late,
            r.orchestrator_peak_rss_mb,
            r.back_to_normal_secs
                .map_or("-".to_owned(), |s| format!("{s:.1}"))
        );
    }
}

/// Goodput and the p99 of accepted starts against the offered load, as an
/// SVG chart.
pub fn chart(sweep: &Sweep, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let max_offered = sweep
        .rates
        .iter()
        .map(|r| r.offered_per_sec)
        .fold(1.0, f64::max)
        * 1.05;
    let max_rate = sweep
        .rates
        .iter()
        .map(|r| r.offered_per_sec.max(r.goodput_per_sec))
        .fold(1.0, f64::max)
        * 1.1;
    let max_p99 = sweep.rates.iter().map(|r| r.p99_ms).fold(100.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Goodput and p99 latency against offered load (open loop)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0.0..max_offered, 0.0..max_rate)?
        .set_secondary_coord(0.0..max_offered, 0.0..max_p99);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("offered starts per second")
        .y_desc("sagas per second")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("p99 of accepted starts, ms")
        .draw()?;
    let points = |f: fn(&Rate) -> f64| -> Vec<(f64, f64)> {
        sweep
            .rates
            .iter()
            .map(|r| (r.offered_per_sec, f(r)))
            .collect()
    };
    let blue = RGBColor(31, 90, 170);
    let orange = RGBColor(200, 90, 20);
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (max_offered, max_offered)],
            ShapeStyle::from(&RGBColor(170, 170, 170)).stroke_width(1),
        ))?
        .label("offered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(170, 170, 170)));
    chart
        .draw_series(LineSeries::new(
            points(|r| r.goodput_per_sec),
            blue.stroke_width(2),
        ))?
        .label("goodput")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart.draw_series(
        points(|r| r.goodput_per_sec)
            .into_iter()
            .map(|p| Circle::new(p, 4, blue.filled())),
    )?;
    chart
        .draw_secondary_series(LineSeries::new(
            points(|r| r.p99_ms),
            orange.stroke_width(2),
        ))?
        .label("p99 latency")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], orange.stroke_width(2)));
    chart.draw_secondary_series(
        points(|r| r.p99_ms)
            .into_iter()
            .map(|p| TriangleMarker::new(p, 5, orange.filled())),
    )?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
