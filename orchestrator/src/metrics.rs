//! The orchestrator's metrics, by definition and step name (bounded label
//! values: never a saga id). Handles are cheap clones of the same series.

use std::time::Duration;

use common::metrics::{
    Counter, EncodeLabelSet, Family, Gauge, Histogram, Latencies, Registry, latencies,
};
use prometheus_client::metrics::histogram::exponential_buckets;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DefinitionLabels {
    pub definition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub definition: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub definition: String,
    pub step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub definition: String,
    pub step: String,
    /// `succeeded`, `transient` (will be retried) or `failed`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub definition: String,
    /// `running` or `compensating`.
    pub status: &'static str,
}

/// Every series the engine keeps.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    pub started: Family<DefinitionLabels, Counter>,
    pub ended: Family<OutcomeLabels, Counter>,
    /// Sagas this process drives now, by status.
    pub driven: Family<StatusLabels, Gauge>,
    pub attempts: Latencies<AttemptLabels>,
    pub retries: Family<StepLabels, Counter>,
    pub compensations: Family<StepLabels, Counter>,
    /// Compensations failing for longer than `STUCK_AFTER_SECS`, now.
    pub stuck: Family<StepLabels, Gauge>,
    pub writer: WriterMetrics,
    pub claimed: Counter,
    /// How long a compensation fails before it counts as stuck.
    pub stuck_after: Duration,
}

impl SagaMetrics {
    pub fn new(stuck_after: Duration) -> Self {
        Self {
            started: Family::default(),
            ended: Family::default(),
            driven: Family::default(),
            attempts: latencies(),
            retries: Family::default(),
            compensations: Family::default(),
            stuck: Family::default(),
            writer: WriterMetrics::default(),
            claimed: Counter::default(),
            stuck_after,
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sagas_started",
            "Sagas started by this process, by definition",
            self.started.clone(),
        );
        registry.register(
            "sagas_ended",
            "Sagas ended by this process, by definition and outcome (succeeded or failed)",
            self.ended.clone(),
        );
        registry.register(
            "sagas_driven",
            "Sagas this process drives now, by definition and status (running or compensating)",
            self.driven.clone(),
        );
        registry.register(
            "saga_step_attempt_duration_seconds",
            "Participant calls, by definition, step and outcome (succeeded, transient: retried, failed: for good)",
            self.attempts.clone(),
        );
        registry.register(
            "saga_step_retries",
            "Failed attempts to be tried again, by definition and step",
            self.retries.clone(),
        );
        registry.register(
            "saga_compensations",
            "Compensations run to success, by definition and step",
            self.compensations.clone(),
        );
        registry.register(
            "saga_compensations_stuck",
            "Compensations failing for longer than STUCK_AFTER_SECS now, by definition and step",
            self.stuck.clone(),
        );
        registry.register(
            "saga_writer_batch_size",
            "Saga transitions written per statement (one commit)",
            self.writer.batch_size.clone(),
        );
        registry.register(
            "saga_writer_commit_duration_seconds",
            "Time of one writer statement, its commit included",
            self.writer.commit.clone(),
        );
        registry.register(
            "saga_recovery_claims",
            "Sagas taken over by this process (from a stopped process, or its own at start-up)",
            self.claimed.clone(),
        );
    }

    /// Counts a saga driven in `status` for as long as the guard lives.
    pub fn driving(&self, definition: &str, status: &'static str) -> Driven {
        let driven = self.driven.clone();
        let labels = StatusLabels {
            definition: definition.to_owned(),
            status,
        };
        driven.get_or_create(&labels).inc();
        Driven { driven, labels }
    }
}

/// The writer's: each batch's size and time.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    pub batch_size: Histogram,
    pub commit: Histogram,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit: common::metrics::latency_histogram(),
        }
    }
}

/// A saga counted in `sagas_driven`; moved to another status or dropped.
#[derive(Debug)]
pub struct Driven {
    driven: Family<StatusLabels, Gauge>,
    labels: StatusLabels,
}

impl Driven {
    pub fn set(&mut self, status: &'static str) {
        if self.labels.status != status {
            self.driven.get_or_create(&self.labels).dec();
            self.labels.status = status;
            self.driven.get_or_create(&self.labels).inc();
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.driven.get_or_create(&self.labels).dec();
    }
}

/// A compensation counted in `saga_compensations_stuck` while it lives.
#[derive(Debug)]
pub struct Stuck {
    stuck: Family<StepLabels, Gauge>,
    labels: StepLabels,
}

impl Stuck {
    pub fn new(metrics: &SagaMetrics, labels: StepLabels) -> Self {
        metrics.stuck.get_or_create(&labels).inc();
        Self {
            stuck: metrics.stuck.clone(),
            labels,
        }
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        self.stuck.get_or_create(&self.labels).dec();
    }
}
