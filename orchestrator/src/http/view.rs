//! A saga as the API shows it: the row, plus its steps folded from the log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::saga::{SagaStatus, StepEvent};
use crate::store::{LogRecord, SagaRecord};

/// A saga in JSON.
#[derive(Debug, Serialize)]
pub struct SagaView {
    pub trip_id: String,
    pub run_type: String,
    pub status: SagaStatus,
    pub definition_version: i32,
    pub input: Value,
    pub outputs: Value,
    /// The steps that ran, in order.
    pub steps: Vec<StepView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One step that ran.
#[derive(Debug, Serialize)]
pub struct StepView {
    pub step: String,
    /// `running`, `succeeded` or `failed`.
    pub status: &'static str,
    pub attempts: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error, while retrying or once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Value>,
}

impl SagaView {
    /// `logs` are the saga's log rows in `seq` order.
    pub fn new(saga: SagaRecord, logs: &[LogRecord]) -> Self {
        let mut steps: Vec<StepView> = Vec::new();
        for record in logs {
            let index = match steps.iter().position(|s| s.step == record.step) {
                Some(index) => index,
                None => {
                    steps.push(StepView {
                        step: record.step.clone(),
                        status: "running",
                        attempts: 0,
                        started_at: record.at,
                        ended_at: None,
                        last_error: None,
                    });
                    steps.len() - 1
                }
            };
            let step = &mut steps[index];
            step.attempts = step.attempts.max(record.attempt);
            match record.status {
                StepEvent::Started => {}
                StepEvent::Retrying => step.last_error = Some(record.detail.clone()),
                StepEvent::Succeeded => {
                    step.status = "succeeded";
                    step.ended_at = Some(record.at);
                }
                StepEvent::Failed => {
                    step.status = "failed";
                    step.ended_at = Some(record.at);
                    step.last_error = Some(record.detail.clone());
                }
            }
        }
        Self {
            trip_id: saga.trip_id,
            run_type: saga.run_type,
            status: saga.status,
            definition_version: saga.definition_version,
            input: saga.input,
            outputs: saga.outputs,
            steps,
            created_at: saga.created_at,
            updated_at: saga.updated_at,
        }
    }
}
