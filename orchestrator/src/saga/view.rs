//! A saga as the API shows it: the row, plus its steps folded from the log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::saga::{SagaStatus, StepEvent};
use crate::store::{LogRecord, SagaRecord};

/// A saga in JSON.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaView {
    pub id: String,
    pub definition: String,
    pub definition_version: i32,
    pub status: SagaStatus,
    /// The saga's input, its definition's defaults filled in.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The answers of the forward steps that succeeded, by step name.
    #[schema(value_type = Object)]
    pub outputs: Value,
    /// The steps that ran, in order.
    pub steps: Vec<StepView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One step that ran.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub step: String,
    /// `running`, `succeeded` or `failed`.
    #[schema(value_type = String, pattern = "^(running|succeeded|failed)$")]
    pub status: &'static str,
    pub attempts: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error, while retrying or once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub last_error: Option<Value>,
}

impl SagaView {
    /// `logs` are the saga's log rows in `seq` order. The outputs are the
    /// answers in the `succeeded` rows of the steps `is_forward` names.
    pub fn new(saga: SagaRecord, logs: &[LogRecord], is_forward: impl Fn(&str) -> bool) -> Self {
        let mut outputs = Map::new();
        let mut steps = Vec::new();
        for record in logs {
            if record.status == StepEvent::Succeeded && is_forward(&record.step) {
                outputs.insert(record.step.clone(), record.detail.clone());
            }
            StepView::fold(
                &mut steps,
                &record.step,
                record.status,
                record.attempt,
                &record.detail,
                record.at,
            );
        }
        Self {
            id: saga.saga_id,
            definition: saga.definition,
            definition_version: saga.definition_version,
            status: saga.status,
            input: saga.input,
            outputs: Value::Object(outputs),
            steps,
            created_at: saga.created_at,
            updated_at: saga.updated_at,
        }
    }
}

impl StepView {
    /// Adds one log event to `steps`, the saga's steps so far: the view is
    /// folded from the log, row by row, whether the rows are read back or
    /// just written.
    pub fn fold(
        steps: &mut Vec<StepView>,
        step: &str,
        event: StepEvent,
        attempt: i32,
        detail: &Value,
        at: DateTime<Utc>,
    ) {
        let index = match steps.iter().position(|s| s.step == step) {
            Some(index) => index,
            None => {
                steps.push(StepView {
                    step: step.to_owned(),
                    status: "running",
                    attempts: 0,
                    started_at: at,
                    ended_at: None,
                    last_error: None,
                });
                steps.len() - 1
            }
        };
        let view = &mut steps[index];
        view.attempts = view.attempts.max(attempt);
        match event {
            StepEvent::Started => {}
            StepEvent::Retrying => view.last_error = Some(detail.clone()),
            StepEvent::Succeeded => {
                view.status = "succeeded";
                view.ended_at = Some(at);
            }
            StepEvent::Failed => {
                view.status = "failed";
                view.ended_at = Some(at);
                view.last_error = Some(detail.clone());
            }
        }
    }
}
