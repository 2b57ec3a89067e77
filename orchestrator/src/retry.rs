//! The retry policy of participant calls: exponential backoff with jitter,
//! a bounded number of attempts for forward steps, none for compensations
//! (they are retried until they succeed), and a retry budget per
//! participant that bounds the rate of retries, whatever their number.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tower::retry::budget::{Budget, TpsBudget};

/// Retry settings, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryConfig {
    /// Attempts of a forward step (the first included) before it counts as
    /// failed with its outcome unknown.
    #[arg(long, env = "STEP_MAX_ATTEMPTS", default_value_t = 4)]
    pub step_max_attempts: usize,

    /// Delay before the first retry, in milliseconds.
    #[arg(long, env = "RETRY_INITIAL_DELAY_MS", default_value_t = 100)]
    pub retry_initial_delay_ms: u64,

    /// Factor by which each delay grows.
    #[arg(long, env = "RETRY_MULTIPLIER", default_value_t = 2.0)]
    pub retry_multiplier: f32,

    /// Largest delay between two attempts of a forward step, in milliseconds.
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 2_000)]
    pub retry_max_delay_ms: u64,

    /// Largest delay between two attempts of a compensation, in
    /// milliseconds; compensations never give up.
    #[arg(long, env = "COMPENSATION_MAX_DELAY_MS", default_value_t = 10_000)]
    pub compensation_max_delay_ms: u64,

    /// Add a random part (up to the delay itself) to every delay, so that
    /// sagas failing together do not retry together.
    #[arg(long, env = "RETRY_JITTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub retry_jitter: bool,

    /// Time limit of one attempt of a participant call, in milliseconds.
    #[arg(long, env = "ATTEMPT_TIMEOUT_MS", default_value_t = 5_000)]
    pub attempt_timeout_ms: u64,

    /// Retries to one participant, as a percentage of the first attempts
    /// sent to it over the last 10 s; a retry past the budget waits for it.
    #[arg(long, env = "RETRY_BUDGET_PERCENT", default_value_t = 20.0)]
    pub retry_budget_percent: f32,

    /// Retries per second to one participant allowed whatever the budget,
    /// so that a participant called rarely is still retried promptly.
    #[arg(long, env = "RETRY_BUDGET_MIN_PER_SEC", default_value_t = 10)]
    pub retry_budget_min_per_sec: u32,

    /// A compensation failing for longer than this, in seconds, counts as
    /// stuck (`saga_compensations_stuck`).
    #[arg(long, env = "STUCK_AFTER_SECS", default_value_t = 300)]
    pub stuck_after_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            step_max_attempts: 4,
            retry_initial_delay_ms: 100,
            retry_multiplier: 2.0,
            retry_max_delay_ms: 2_000,
            compensation_max_delay_ms: 10_000,
            retry_jitter: true,
            attempt_timeout_ms: 5_000,
            retry_budget_percent: 20.0,
            retry_budget_min_per_sec: 10,
            stuck_after_secs: 300,
        }
    }
}

/// One participant's retry budget (Finagle's, as tower implements it):
/// every first attempt deposits, every retry withdraws, and a retry the
/// balance cannot pay for waits until it can. Retries are never dropped, so
/// that a compensation goes on however long its participant fails; the
/// budget only bounds how fast a failing participant is asked again, so that
/// a slow or failing participant is not sent its own load again in retries
/// on top of its first attempts.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl RetryBudget {
    /// The window over which first attempts count towards the budget.
    const WINDOW: Duration = Duration::from_secs(10);

    pub fn new(config: &RetryConfig) -> Self {
        // At least one a second: a budget of none would leave a failing
        // compensation waiting forever.
        Self(TpsBudget::new(
            Self::WINDOW,
            config
                .retry_budget_min_per_sec
                .clamp(1, i32::MAX as u32 - 1),
            (config.retry_budget_percent / 100.0).clamp(0.0, 1000.0),
        ))
    }

    /// Counts a first attempt (or a taken-over saga's next one).
    pub fn first_attempt(&self) {
        self.0.deposit();
    }

    /// Waits until the budget pays for one retry, and spends it. The waits
    /// grow (with jitter) up to half a second, so that the retries waiting
    /// do not poll in step.
    pub async fn retry(&self) {
        let mut waits = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .without_max_times()
            .build();
        while !self.0.withdraw() {
            let wait = waits.next().unwrap_or(Duration::from_millis(500));
            tokio::time::sleep(wait).await;
        }
    }
}

/// How one kind of call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    builder: ExponentialBuilder,
    /// Whether a business failure (a 4xx other than 408 and 429) ends the
    /// call at once: true for forward steps, false for compensations, which
    /// cannot fail for business reasons.
    business_is_final: bool,
}

impl RetryPolicy {
    /// The delays between attempts; the sequence ends when the attempts are
    /// spent.
    pub fn backoff(&self) -> ExponentialBackoff {
        self.builder.build()
    }

    /// The same policy with `max` attempts (the first included): a step's
    /// own budget.
    pub fn with_max_attempts(self, max: usize) -> Self {
        Self {
            builder: self.builder.with_max_times(max.saturating_sub(1)),
            ..self
        }
    }

    /// The retry state of one call.
    pub fn attempts(&self) -> Attempts {
        Attempts {
            delays: self.backoff(),
            business_is_final: self.business_is_final,
        }
    }
}

/// The retry state of one call: decides, after each failed attempt, whether
/// and when to try again.
#[derive(Debug)]
pub struct Attempts {
    delays: ExponentialBackoff,
    business_is_final: bool,
}

impl Attempts {
    /// After a failed attempt (`transient`: a timeout, a connection error,
    /// 408, 429 or 5xx): the delay before the next attempt, or `None` when
    /// the call has failed for good.
    pub fn after_failure(&mut self, transient: bool) -> Option<Duration> {
        if self.business_is_final && !transient {
            return None;
        }
        self.delays.next()
    }
}

impl RetryConfig {
    fn builder(&self, max_delay_ms: u64) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.retry_initial_delay_ms))
            .with_factor(self.retry_multiplier.max(1.0))
            .with_max_delay(Duration::from_millis(
                max_delay_ms.max(self.retry_initial_delay_ms),
            ));
        if self.retry_jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// Forward steps: up to `step_max_attempts` attempts.
    pub fn forward(&self) -> RetryPolicy {
        RetryPolicy {
            builder: self
                .builder(self.retry_max_delay_ms)
                .with_max_times(self.step_max_attempts.saturating_sub(1)),
            business_is_final: true,
        }
    }

    /// Compensations: capped backoff, forever.
    pub fn compensation(&self) -> RetryPolicy {
        RetryPolicy {
            builder: self
                .builder(self.compensation_max_delay_ms)
                .without_max_times(),
            business_is_final: false,
        }
    }

    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            retry_jitter: false,
            ..RetryConfig::default()
        }
    }

    #[test]
    fn forward_steps_stop_after_max_attempts() {
        let delays: Vec<_> = config().forward().backoff().collect();
        let ms = |d: &Duration| d.as_millis();
        assert_eq!(
            delays.iter().map(ms).collect::<Vec<_>>(),
            vec![100, 200, 400]
        );
    }

    /// Runs attempts failing as `failures` says (true: transient) until the
    /// policy gives up or the script ends; returns the attempts made and the
    /// virtual time spent waiting, checked against the delays asked for
    /// (the timer rounds each sleep up to its next millisecond).
    async fn script(policy: RetryPolicy, failures: &[bool]) -> (usize, u128) {
        let start = tokio::time::Instant::now();
        let mut attempts = policy.attempts();
        let mut made = 0;
        let mut asked = Duration::ZERO;
        for &transient in failures {
            made += 1;
            match attempts.after_failure(transient) {
                Some(delay) => {
                    asked += delay;
                    tokio::time::sleep(delay).await;
                }
                None => break,
            }
        }
        let waited = start.elapsed();
        let slack = Duration::from_millis(u64::try_from(made).unwrap_or(u64::MAX));
        assert!(
            asked <= waited && waited <= asked + slack,
            "waited {waited:?} for {asked:?}"
        );
        (made, asked.as_millis())
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_step_retries_transient_failures_until_its_budget_is_spent() {
        let (made, waited) = script(config().forward(), &[true; 10]).await;
        assert_eq!(made, 4, "STEP_MAX_ATTEMPTS attempts, then the step fails");
        assert_eq!(waited, 100 + 200 + 400);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_steps_business_failure_is_final_at_once() {
        let (made, waited) = script(config().forward(), &[true, false, true]).await;
        assert_eq!((made, waited), (2, 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_compensation_retries_every_failure_with_capped_backoff() {
        let (made, waited) = script(config().compensation(), &[false; 12]).await;
        assert_eq!(made, 12);
        // 100, 200, ..., 6400, then capped at 10 s: 12700 + 5 * 10000.
        assert_eq!(waited, 12_700 + 50_000);
    }

    #[test]
    fn compensations_never_stop_and_are_capped() {
        let delays: Vec<_> = config().compensation().backoff().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert_eq!(delays[19], Duration::from_millis(10_000));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Spends `n` retries of `budget`, each as soon as it pays for it;
    /// returns the virtual time each waited.
    async fn spend(budget: &RetryBudget, n: usize) -> Vec<Duration> {
        let mut waited = Vec::new();
        for _ in 0..n {
            let start = tokio::time::Instant::now();
            budget.retry().await;
            waited.push(start.elapsed());
        }
        waited
    }

    #[tokio::test(start_paused = true)]
    async fn retries_past_the_budget_wait_for_the_window_and_are_never_dropped() {
        // No share of first attempts: only the minimum, 2 a second over the
        // 10 s window.
        let budget = RetryBudget::new(&RetryConfig {
            retry_budget_percent: 0.0,
            retry_budget_min_per_sec: 2,
            ..config()
        });
        let waited = spend(&budget, 21).await;
        assert!(waited[..20].iter().all(Duration::is_zero), "{waited:?}");
        // The 21st waits until the first withdrawals leave the window (ten
        // slices of a second, the oldest dropped as a new one begins).
        let last = waited[20];
        assert!(
            last >= Duration::from_secs(8) && last <= Duration::from_millis(10_600),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_attempts_pay_for_their_share_of_retries() {
        // Half of the first attempts, and 1 a second: 10 retries in hand.
        let budget = RetryBudget::new(&RetryConfig {
            retry_budget_percent: 50.0,
            retry_budget_min_per_sec: 1,
            ..config()
        });
        assert!(spend(&budget, 10).await.iter().all(Duration::is_zero));
        for _ in 0..4 {
            budget.first_attempt();
        }
        // Four first attempts pay for two more retries, at once.
        assert!(spend(&budget, 2).await.iter().all(Duration::is_zero));
        let next = spend(&budget, 1).await[0];
        assert!(next > Duration::ZERO, "the budget is spent: {next:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_set_to_nothing_still_lets_a_retry_through_every_second() {
        let budget = RetryBudget::new(&RetryConfig {
            retry_budget_percent: 0.0,
            retry_budget_min_per_sec: 0,
            ..config()
        });
        let waited = spend(&budget, 11).await;
        assert!(waited[..10].iter().all(Duration::is_zero), "{waited:?}");
        assert!(waited[10] <= Duration::from_millis(10_600), "{waited:?}");
    }
}
