//! Taking sagas over: at start-up a process reclaims its own unfinished
//! sagas at once, and every process keeps claiming the sagas whose lease ran
//! out (their process died or stalled) or was handed back. A saga taken
//! over needs a slot as a new one does ([`super::admission`]): a claim takes
//! as many as there are free slots, and when there are none it waits for
//! the next ones ahead of new starts.

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
    /// run with the same identity, without waiting for their leases, as
    /// many as there are slots for. Call it once at start-up, before any
    /// new saga is started; returns the time to hand [`Engine::recover`],
    /// which takes the rest as slots come free.
    pub async fn reclaim_own(self: &Arc<Self>) -> sqlx::Result<DateTime<Utc>> {
        // Only the sagas written before now: those this process has just
        // claimed are its own too, and must not be claimed again.
        let started = store::now(&self.pool).await?;
        while self.claim_batch(Some(started), None).await? {}
        Ok(started)
    }

    /// Every `interval` until shutdown, takes over the sagas whose lease ran
    /// out or was handed back (and this process's own, last written before
    /// `own_before`), and loads the definition versions other replicas
    /// registered. Logs the starts refused for want of a slot.
    pub async fn recover(self: Arc<Self>, interval: Duration, own_before: Option<DateTime<Utc>>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.shutdown.cancelled() => return,
            }
            let shed = self.admission.take_shed();
            if shed > 0 {
                tracing::warn!(
                    shed,
                    active = self.admission.active(),
                    waiting = self.admission.waiting(),
                    max_active_sagas = self.admission.limits().max_active_sagas,
                    "starts refused for want of a slot (MAX_ACTIVE_SAGAS)"
                );
            }
            if let Err(err) = self.refresh_definitions().await {
                tracing::warn!(%err, "cannot read the definitions; will retry");
            }
            while !self.shutdown.is_cancelled() {
                match self.claim_batch(own_before, Some(interval)).await {
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

    /// Claims one batch, as many sagas as there are free slots, and drives
    /// it; `true` if the batch was full. With no free slot, and `wait`, it
    /// waits up to `wait` for the next ones if there is a saga to claim.
    /// With `own_before`, this process's own sagas last written before then
    /// are claimed too, whatever their lease.
    async fn claim_batch(
        self: &Arc<Self>,
        own_before: Option<DateTime<Utc>>,
        wait: Option<Duration>,
    ) -> sqlx::Result<bool> {
        let mut slots = self.admission.take_free(BATCH);
        if slots.is_empty() {
            let Some(wait) = wait else {
                return Ok(false);
            };
            let owner = &self.owner;
            if !self
                .bounded(async |conn| store::claimable(conn, owner, own_before).await)
                .await?
            {
                return Ok(false);
            }
            // A quarter of the slots at a time: starts keep the rest.
            let share = (self.admission.limits().max_active_sagas / 4).clamp(1, BATCH);
            slots = self.admission.take_next(share, wait).await;
            if slots.is_empty() {
                return Ok(false);
            }
        }
        let limit = slots.len();
        let claimed = self
            .bounded(async |conn| {
                let (owner, lease_secs) = (&self.owner, self.lease_secs);
                store::claim(conn, owner, own_before, lease_secs, limit as i64).await
            })
            .await?;
        let full = claimed.len() == limit;
        // The slots left over are given back as the iterator is dropped.
        for (saga, slot) in claimed.into_iter().zip(slots) {
            let saga_id = saga.saga_id.clone();
            match self.resume(saga).await? {
                Ok(run) => self.spawn(run, slot),
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
