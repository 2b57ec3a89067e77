//! The saga's vocabulary: saga and step-event statuses, the same for every
//! definition.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a saga is: still going forward, undoing, or ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "saga_status", rename_all = "lowercase")]
pub enum SagaStatus {
    Running,
    Compensating,
    Succeeded,
    Failed,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 4] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Succeeded,
        SagaStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Succeeded => "succeeded",
            SagaStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Succeeded | SagaStatus::Failed)
    }
}

impl FromStr for SagaStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}; use running, compensating, succeeded or failed")
            })
    }
}

/// One event of a step in `saga_log`: `started` when the first attempt is
/// sent, `retrying` for each failed attempt that will be retried, then one
/// final `succeeded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "step_event", rename_all = "lowercase")]
pub enum StepEvent {
    Started,
    Retrying,
    Succeeded,
    Failed,
}

impl StepEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            StepEvent::Started => "started",
            StepEvent::Retrying => "retrying",
            StepEvent::Succeeded => "succeeded",
            StepEvent::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in SagaStatus::ALL {
            assert_eq!(status.as_str().parse::<SagaStatus>(), Ok(status));
        }
    }
}
