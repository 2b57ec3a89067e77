//! Taking sagas over: at start-up a process reclaims its own unfinished
//! sagas at once, and every process keeps claiming the sagas whose lease ran
//! out (their process died or stalled) or was handed back.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::drive::Run;
use super::engine::Engine;
use super::model::StepEvent;
use crate::definition::{Outputs, Position};
use crate::store;

/// The most sagas one claim takes.
const BATCH: usize = 500;

impl Engine {
    /// Takes over this process's own unfinished sagas, left by a previous
    /// run with the same identity, without waiting for their leases. Call it
    /// once at start-up, before any new saga is started.
    pub async fn reclaim_own(self: &Arc<Self>) -> sqlx::Result<()> {
        // Only the sagas written before now: those this process has just
        // claimed are its own too, and must not be claimed again.
        let started = store::now(&self.pool).await?;
        while self.claim_batch(Some(started)).await? {}
        Ok(())
    }

    /// Every `interval` until shutdown, takes over the sagas whose lease ran
    /// out or was handed back, and loads the definition versions other
    /// replicas registered.
    pub async fn recover(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.shutdown.cancelled() => return,
            }
            if let Err(err) = self.refresh_definitions().await {
                tracing::warn!(%err, "cannot read the definitions; will retry");
            }
            loop {
                match self.claim_batch(None).await {
                    // A full batch: there may be more, claim again at once.
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => {
                        tracing::warn!(%err, "cannot claim sagas; will retry");
                        break;
                    }
                }
            }
        }
    }

    /// Claims one batch and drives it; `true` if the batch was full. With
    /// `own_before`, this process's own sagas last written before then are
    /// claimed too, whatever their lease.
    async fn claim_batch(
        self: &Arc<Self>,
        own_before: Option<DateTime<Utc>>,
    ) -> sqlx::Result<bool> {
        let claimed = self
            .bounded(async |conn| {
                let (owner, lease_secs, limit) = (&self.owner, self.lease_secs, BATCH as i64);
                store::claim(conn, owner, own_before, lease_secs, limit).await
            })
            .await?;
        let full = claimed.len() == BATCH;
        for saga in claimed {
            let saga_id = saga.saga_id.clone();
            match self.resume(saga).await? {
                Ok(run) => self.spawn(run),
                // Left claimed: it is tried again once the lease runs out.
                Err(err) => tracing::error!(%saga_id, %err, "cannot resume saga"),
            }
        }
        Ok(full)
    }

    async fn resume(&self, saga: store::Claimed) -> sqlx::Result<Result<Run, String>> {
        let Some(definition) = self
            .definition(&saga.definition, Some(saga.definition_version))
            .await?
        else {
            return Ok(Err(format!(
                "definition {} version {} is not registered",
                saga.definition, saga.definition_version
            )));
        };
        // The forward steps' answers, handed to later steps.
        let outputs: Outputs = match saga.outputs {
            Value::Object(map) => map
                .into_iter()
                .filter(|(step, _)| definition.is_forward(step))
                .collect(),
            _ => Outputs::new(),
        };
        // The attempt the previous owner may have sent: the first one if the
        // step had only started, else the one after the last retried.
        let interrupted = match saga.last_event {
            StepEvent::Started => 1,
            _ => saga.last_attempt + 1,
        };
        tracing::info!(
            saga_id = %saga.saga_id,
            previous_owner = saga.previous_owner,
            status = saga.status.as_str(),
            "resuming saga"
        );
        Ok(Ok(Run {
            id: saga.saga_id,
            definition,
            input: Arc::new(saga.input),
            position: Position::from_row(saga.status, saga.cursor),
            version: saga.version,
            outputs,
            next_seq: saga.last_seq + 1,
            attempt: interrupted,
            deadline: saga.deadline,
            interrupted: Some(json!({
                "error": "interrupted",
                "message": format!(
                    "the process driving this saga ({}) stopped; resumed by {}",
                    saga.previous_owner.as_deref().unwrap_or("none"),
                    self.owner
                ),
            })),
            shown: None,
        }))
    }
}
