//! Taking sagas over: at start-up a process reclaims its own unfinished
//! sagas at once, and every process keeps claiming the sagas whose lease ran
//! out (their process died or stalled) or was handed back. A saga taken
//! over needs a slot as a new one does ([`super::admission`]): a claim takes
//! as many as there are free slots, and when there are none it waits for
//! one, claims a few, and starts each as the next slot comes free, ahead of
//! new starts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::action::forward_outputs;
use super::admission::Slot;
use super::drive::Run;
use super::engine::Engine;
use super::model::StepEvent;
use crate::definition::Position;
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

    /// Claims one batch and drives it; `true` if the batch was full. With
    /// free slots, it claims as many sagas as there are. With none, and
    /// `wait`, if there is a saga to claim it waits up to `wait` for a slot,
    /// then claims a quarter of the slots' worth. Each saga claimed then
    /// takes a free slot, or the next to come free ahead of new starts. No
    /// slot is held while the claim is made, so that starts do not find the
    /// free slots taken for its duration and get refused; and a process
    /// whose slots are all taken for long claims nothing that another could
    /// drive. With `own_before`, this process's own sagas last written
    /// before then are claimed too, whatever their lease.
    async fn claim_batch(
        self: &Arc<Self>,
        own_before: Option<DateTime<Utc>>,
        wait: Option<Duration>,
    ) -> sqlx::Result<bool> {
        let mut first = None;
        let limit = match self.admission.free() {
            0 => {
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
                first = self.next_slot(wait).await;
                if first.is_none() {
                    return Ok(false);
                }
                // A quarter of the slots at a time: starts keep the rest.
                (self.admission.limits().max_active_sagas / 4).clamp(1, BATCH)
            }
            free => free.min(BATCH),
        };
        let claimed = self.claim(own_before, limit).await?;
        let full = claimed.len() == limit;
        self.metrics.claimed.inc_by(claimed.len() as u64);
        // A saga claimed that finds no slot within a third of its lease is
        // left as it is: its lease runs out, and it is claimed again.
        let within = Duration::from_secs_f64(self.lease_secs / 3.0);
        for saga in claimed {
            let Some(run) = self.resume_logged(saga).await? else {
                continue;
            };
            let slot = match first.take().or_else(|| self.admission.take_free(1).pop()) {
                Some(slot) => slot,
                None => match self.next_slot(within).await {
                    Some(slot) => slot,
                    None => return Ok(false),
                },
            };
            self.spawn(run, slot);
        }
        Ok(full)
    }

    /// The next slot to come free, ahead of the starts that come to wait
    /// after this call; none within `within`, or on shutdown.
    async fn next_slot(&self, within: Duration) -> Option<Slot> {
        tokio::select! {
            mut slots = self.admission.take_next(1, within) => slots.pop(),
            () = self.shutdown.cancelled() => None,
        }
    }

    /// Claims up to `limit` sagas for this process.
    async fn claim(
        &self,
        own_before: Option<DateTime<Utc>>,
        limit: usize,
    ) -> sqlx::Result<Vec<store::Claimed>> {
        self.bounded(async |conn| {
            let (owner, lease_secs) = (&self.owner, self.lease_secs);
            store::claim(conn, owner, own_before, lease_secs, limit as i64).await
        })
        .await
    }

    /// The claimed saga ready to drive, or `None` (logged) if it cannot be:
    /// it is left claimed, and tried again once the lease runs out.
    async fn resume_logged(&self, saga: store::Claimed) -> sqlx::Result<Option<Run>> {
        let saga_id = saga.saga_id.clone();
        Ok(match self.resume(saga).await? {
            Ok(run) => Some(run),
            Err(err) => {
                tracing::error!(%saga_id, %err, "cannot resume saga");
                None
            }
        })
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
        let outputs = forward_outputs(&definition, saga.outputs);
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
        let mut run = Run::new(
            saga.saga_id,
            definition,
            Arc::new(saga.input),
            Position::from_row(saga.status, saga.cursor),
            saga.version,
            outputs,
            saga.last_seq + 1,
            interrupted,
            saga.deadline,
        );
        run.interrupted = Some(json!({
            "error": "interrupted",
            "message": format!(
                "the process driving this saga ({}) stopped; resumed by {}",
                saga.previous_owner.as_deref().unwrap_or("none"),
                self.owner
            ),
        }));
        Ok(Ok(run))
    }
}
