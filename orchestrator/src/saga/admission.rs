//! Admission: how many sagas this process drives at once, and how many
//! starts may wait, and for how long, for one of them to end. Past either
//! bound a start is refused at once, before anything is written (the API
//! answers 503 with `Retry-After`), so that under overload the sagas
//! already accepted finish at full speed instead of every start being
//! queued and every answer coming late.
//!
//! The bound is a fixed number of slots, not an adaptive limit: a saga's
//! cost is its participants' calls and a handful of writes, alike for every
//! saga of a definition, so the number that keeps the machine busy is
//! stable, and the time a start may wait bounds its latency whatever the
//! machine's speed that day. Sagas taken over from a stopped process take
//! slots too, ahead of waiting starts, so that a process resuming thousands
//! of sagas sheds new starts instead of drowning.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Most sagas this process drives at once (started here or taken over).
    #[arg(long, env = "MAX_ACTIVE_SAGAS", default_value_t = 128)]
    pub max_active_sagas: usize,

    /// Most starts waiting for a slot at once; more are refused at once.
    #[arg(long, env = "MAX_WAITING_STARTS", default_value_t = 128)]
    pub max_waiting_starts: usize,

    /// How long a start may wait for a slot before it is refused, in
    /// milliseconds.
    #[arg(long, env = "START_QUEUE_MS", default_value_t = 5)]
    pub start_queue_ms: u64,

    /// Most starts one client address may send a second (`GET /trip`,
    /// `POST /trips`, `POST /sagas/{definition}`); more are answered 429
    /// with `Retry-After`. 0: no limit.
    #[arg(long, env = "START_RATE_PER_CLIENT", default_value_t = 0)]
    pub start_rate_per_client: u32,

    /// How many starts a client may send at once above that rate (0: as
    /// many as the rate, one second's worth).
    #[arg(long, env = "START_BURST_PER_CLIENT", default_value_t = 0)]
    pub start_burst_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_active_sagas: 128,
            max_waiting_starts: 128,
            start_queue_ms: 5,
            start_rate_per_client: 0,
            start_burst_per_client: 0,
        }
    }
}

/// The per-client bound on starts, when `START_RATE_PER_CLIENT` sets one.
pub struct StartRate {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    per_second: u32,
    /// Checks since the last sweep of the clients whose buckets are full.
    checks: AtomicU64,
}

impl std::fmt::Debug for StartRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartRate")
            .field("per_second", &self.per_second)
            .finish_non_exhaustive()
    }
}

/// A start refused because its client sent too many; nothing was written.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "this client sent more than {per_second} starts a second (START_RATE_PER_CLIENT); nothing was started: retry after {retry_after_secs} s"
)]
pub struct TooManyStarts {
    pub per_second: u32,
    /// Whole seconds until a start would be taken (at least 1).
    pub retry_after_secs: u64,
}

impl StartRate {
    /// How many checks between two sweeps of idle clients, so that the
    /// table holds the clients of the last moments, not every one ever.
    const SWEEP_EVERY: u64 = 4096;

    fn new(limits: &Limits) -> Option<Self> {
        let per_second = NonZeroU32::new(limits.start_rate_per_client)?;
        let burst = NonZeroU32::new(limits.start_burst_per_client).unwrap_or(per_second);
        let quota = governor::Quota::per_second(per_second).allow_burst(burst);
        Some(Self {
            limiter: governor::RateLimiter::keyed(quota),
            per_second: per_second.get(),
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one start of `client`'s allowance, or says when it may send
    /// the next.
    pub fn check(&self, client: IpAddr) -> Result<(), TooManyStarts> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % Self::SWEEP_EVERY == Self::SWEEP_EVERY - 1
        {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).map_err(|not_until| {
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            TooManyStarts {
                per_second: self.per_second,
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }
}

/// The right to drive one saga; given back when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Why a start was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `MAX_WAITING_STARTS` starts were waiting already.
    QueueFull,
    /// No slot came free within `START_QUEUE_MS`.
    Waited,
}

/// A start refused for want of a slot; nothing was written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.message())]
pub struct Overloaded {
    pub why: Shed,
    pub limits: Limits,
}

impl Overloaded {
    fn message(&self) -> String {
        let Limits {
            max_active_sagas,
            max_waiting_starts,
            start_queue_ms,
            ..
        } = &self.limits;
        let why = match self.why {
            Shed::QueueFull => {
                format!("{max_waiting_starts} starts (MAX_WAITING_STARTS) are waiting already")
            }
            Shed::Waited => format!("none came free within {start_queue_ms} ms (START_QUEUE_MS)"),
        };
        format!(
            "this orchestrator drives {max_active_sagas} sagas at once (MAX_ACTIVE_SAGAS), and {why}; nothing was started: retry after a second, or send it to another replica"
        )
    }
}

/// The slots of one process, and the starts waiting for them.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    limits: Limits,
    waiting: AtomicUsize,
    /// Starts refused since the last [`Admission::take_shed`], and ever.
    shed: AtomicU64,
    shed_total: AtomicU64,
    start_rate: Option<StartRate>,
    /// Starts refused for their client's rate, ever.
    too_many_total: AtomicU64,
}

/// Counts a start waiting for a slot, for as long as it waits (its request
/// may go away at any point).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_active_sagas: limits.max_active_sagas.max(1),
            ..limits
        };
        Self {
            slots: Arc::new(Semaphore::new(limits.max_active_sagas)),
            waiting: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            shed_total: AtomicU64::new(0),
            start_rate: StartRate::new(&limits),
            too_many_total: AtomicU64::new(0),
            limits,
        }
    }

    /// Takes one of `client`'s starts, when `START_RATE_PER_CLIENT` bounds
    /// them; else always takes it.
    pub fn check_rate(&self, client: IpAddr) -> Result<(), TooManyStarts> {
        let Some(rate) = &self.start_rate else {
            return Ok(());
        };
        rate.check(client).inspect_err(|_| {
            self.too_many_total.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// A slot for a new saga: at once if one is free, else after a wait in
    /// line (first come, first served) of at most `START_QUEUE_MS`.
    pub async fn admit(&self) -> Result<Slot, Overloaded> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(Slot(permit));
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let why = if waiting >= self.limits.max_waiting_starts {
            Shed::QueueFull
        } else {
            let wait = Duration::from_millis(self.limits.start_queue_ms);
            match tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await {
                Ok(Ok(permit)) => return Ok(Slot(permit)),
                _ => Shed::Waited,
            }
        };
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.shed_total.fetch_add(1, Ordering::Relaxed);
        Err(Overloaded {
            why,
            limits: self.limits.clone(),
        })
    }

    /// Up to `n` of the free slots, without waiting.
    pub fn take_free(&self, n: usize) -> Vec<Slot> {
        let n = n.min(self.free());
        match Arc::clone(&self.slots).try_acquire_many_owned(n as u32) {
            Ok(permit) if n > 0 => split(permit),
            _ => Vec::new(),
        }
    }

    /// `n` slots, ahead of the starts that come to wait after this call;
    /// none if they do not come free within `within`.
    pub async fn take_next(&self, n: usize, within: Duration) -> Vec<Slot> {
        let n = n.clamp(1, self.limits.max_active_sagas) as u32;
        match tokio::time::timeout(within, Arc::clone(&self.slots).acquire_many_owned(n)).await {
            Ok(Ok(permit)) => split(permit),
            _ => Vec::new(),
        }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }

    /// Sagas driven now.
    pub fn active(&self) -> usize {
        self.limits.max_active_sagas - self.slots.available_permits()
    }

    /// Starts waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// The starts refused since the last call.
    pub fn take_shed(&self) -> u64 {
        self.shed.swap(0, Ordering::Relaxed)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// The slots, read at each scrape.
impl Collector for Admission {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "saga_slots",
                "Sagas this process may drive at once (MAX_ACTIVE_SAGAS)",
                self.limits.max_active_sagas,
            ),
            (
                "saga_slots_in_use",
                "Sagas this process drives now (started here or taken over)",
                self.active(),
            ),
            (
                "saga_starts_waiting",
                "Starts waiting for a slot now",
                self.waiting(),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let shed = ConstCounter::new(self.shed_total.load(Ordering::Relaxed));
        shed.encode(encoder.encode_descriptor(
            "saga_starts_shed",
            "Starts refused for want of a slot (503 overloaded)",
            None,
            shed.metric_type(),
        )?)?;
        let too_many = ConstCounter::new(self.too_many_total.load(Ordering::Relaxed));
        too_many.encode(encoder.encode_descriptor(
            "saga_starts_rate_limited",
            "Starts refused for their client's rate (429 too_many_starts)",
            None,
            too_many.metric_type(),
        )?)
    }
}

/// One slot per permit of `permit`.
fn split(mut permit: OwnedSemaphorePermit) -> Vec<Slot> {
    let mut slots = Vec::with_capacity(permit.num_permits());
    while permit.num_permits() > 1 {
        if let Some(one) = permit.split(1) {
            slots.push(Slot(one));
        }
    }
    slots.push(Slot(permit));
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(active: usize, waiting: usize) -> Admission {
        Admission::new(Limits {
            max_active_sagas: active,
            max_waiting_starts: waiting,
            start_queue_ms: 50,
            ..Limits::default()
        })
    }

    #[test]
    fn a_client_past_its_start_rate_is_told_when_to_come_back_and_others_are_not() {
        let a = Admission::new(Limits {
            start_rate_per_client: 1,
            start_burst_per_client: 2,
            ..Limits::default()
        });
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(a.check_rate(one).is_ok());
        assert!(a.check_rate(one).is_ok());
        let refused = a.check_rate(one).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert!(a.check_rate(two).is_ok());
        assert_eq!(a.too_many_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn without_a_start_rate_every_start_is_taken() {
        let a = admission(1, 1);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..10_000).all(|_| a.check_rate(client).is_ok()));
    }

    #[tokio::test]
    async fn a_start_past_the_bounds_is_refused_and_a_freed_slot_goes_to_the_one_waiting() {
        let a = Arc::new(admission(2, 1));
        let one = a.admit().await.unwrap();
        let _two = a.admit().await.unwrap();
        assert_eq!(a.active(), 2);
        // No slot comes free in time.
        assert_eq!(a.admit().await.unwrap_err().why, Shed::Waited);
        // One start waits; a second finds the line full at once.
        let waiter = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.admit().await.map(drop) }
        });
        while a.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(a.admit().await.unwrap_err().why, Shed::QueueFull);
        drop(one);
        waiter
            .await
            .unwrap()
            .expect("the freed slot goes to the start waiting");
        assert_eq!(a.take_shed(), 2);
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn takeovers_take_free_slots_or_wait_for_busy_ones() {
        let a = Arc::new(admission(4, 8));
        let held = a.take_free(3);
        assert_eq!((held.len(), a.active()), (3, 3));
        let last = a.take_free(5);
        assert_eq!(last.len(), 1);
        assert!(a.take_free(1).is_empty());
        let next = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.take_next(2, Duration::from_secs(10)).await.len() }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(next.await.unwrap(), 2);
        drop(last);
        assert_eq!(a.active(), 0);
    }
}
