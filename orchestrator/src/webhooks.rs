//! Webhooks: a saga's end, sent to every subscribed URL as a signed JSON
//! event, following the Standard Webhooks convention (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, the secret in the `whsec_<base64>` form), so that
//! the receivers' own libraries verify it.
//!
//! The end of a saga and its deliveries are one transaction (the outbox,
//! [`crate::store::webhooks`]). The statement that ends a saga claims its
//! deliveries for this process, and its driver hands them, with the saga as
//! it saw it, straight to the worker here: the fast path neither claims nor
//! reads anything. The worker in every orchestrator also polls for the due
//! ones (`SKIP LOCKED`, so replicas share them): retries, events enqueued
//! elsewhere (a stuck compensation, an operator's action), and the claims
//! of a process that died. What is not answered 2xx is retried with backoff
//! for a day. A delivery is sent at least once: receivers drop a second
//! copy by its `webhook-id`. Sending never holds up a saga's driving: a
//! hand-off that finds the worker's queue full is left to its claim running
//! out, and the worker has its own client and its own connections of the
//! pool.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde::Serialize;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::definition::Definition;
use crate::saga::engine::Engine;
use crate::saga::view::SagaView;
use crate::store::{self, webhooks::Due};

/// The event types a subscription may ask for.
pub const EVENT_TYPES: [&str; 3] = ["saga.succeeded", "saga.failed", STUCK];

/// A compensation has failed for longer than `STUCK_AFTER_SECS`.
pub const STUCK: &str = "saga.compensation_stuck";

/// Webhook settings, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookConfig {
    /// A URL that gets every event, as a subscription named `config`
    /// (`WEBHOOK_SECRET_FILE` holds its secret).
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// A file holding the secret of `WEBHOOK_URL`, `whsec_` and base64, as
    /// the Standard Webhooks libraries take it.
    #[arg(long, env = "WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Time limit of one delivery attempt, in milliseconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// Delay before a failed delivery's second attempt, in milliseconds;
    /// each delay doubles, up to an hour, for a day.
    #[arg(long, env = "WEBHOOK_RETRY_INITIAL_MS", default_value_t = 5_000)]
    pub webhook_retry_initial_ms: u64,

    /// How often the worker looks for due deliveries (retries, and what no
    /// driver here handed over), in milliseconds.
    #[arg(long, env = "WEBHOOK_POLL_MS", default_value_t = 500)]
    pub webhook_poll_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret_file: None,
            webhook_timeout_ms: 10_000,
            webhook_retry_initial_ms: 5_000,
            webhook_poll_ms: 500,
        }
    }
}

impl WebhookConfig {
    /// How long a delivery is claimed for one attempt: longer than the
    /// attempt, so that a live worker's claim is never taken.
    pub fn claim(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms).saturating_mul(2) + Duration::from_secs(5)
    }

    /// `WEBHOOK_URL` and the secret its file holds, checked.
    pub fn configured(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(url) = self.webhook_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        check_url(url).map_err(|err| anyhow::anyhow!("WEBHOOK_URL={url:?}: {err}"))?;
        let file = self
            .webhook_secret_file
            .as_ref()
            .context("WEBHOOK_URL is set without WEBHOOK_SECRET_FILE: give the file that holds its secret (whsec_ and base64)")?;
        let secret = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read WEBHOOK_SECRET_FILE={}", file.display()))?
            .trim()
            .to_owned();
        key(&secret).with_context(|| {
            format!(
                "WEBHOOK_SECRET_FILE={} does not hold a secret of the form whsec_<base64>",
                file.display()
            )
        })?;
        Ok(Some((url.to_owned(), secret)))
    }
}

/// Whether `url` is one a webhook can be sent to.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("give an http:// or https:// URL with a host".into());
    }
    Ok(())
}

/// A new secret: 32 random bytes, as `whsec_<base64>`.
pub fn new_secret() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The signing key a `whsec_<base64>` secret holds.
fn key(secret: &str) -> anyhow::Result<Vec<u8>> {
    let encoded = secret
        .strip_prefix("whsec_")
        .context("the secret does not start with whsec_")?;
    let key = STANDARD.decode(encoded).context("not base64")?;
    anyhow::ensure!(!key.is_empty(), "the key is empty");
    Ok(key)
}

/// The `webhook-signature` header of `body`, sent as message `id` at
/// `timestamp` (Unix seconds).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    let key = key(secret)?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|_| anyhow::anyhow!("HMAC takes a key of any length"))?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The event of a saga's end: the saga as the API shows it, and a line a
/// person reads, from the definition's `messages` when it has one.
pub fn event<'a>(
    kind: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
    saga: &'a SagaView,
    definition: Option<&Definition>,
) -> Event<'a> {
    let failed_step = saga
        .steps
        .iter()
        .find(|s| s.status == "failed")
        .map(|s| s.step.as_str());
    let message = definition
        .and_then(|d| custom_message(kind, saga, failed_step, d))
        .unwrap_or_else(|| generic_message(kind, saga, failed_step));
    Event {
        kind,
        timestamp: created_at,
        data: EventData {
            saga,
            message,
            failed_step,
        },
    }
}

/// A webhook's body: `{"type", "timestamp", "data"}`, as Standard Webhooks
/// shapes an event.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub data: EventData<'a>,
}

/// The saga as the API shows it, with the event's message and the step
/// that failed, if one did.
#[derive(Debug, Serialize)]
pub struct EventData<'a> {
    #[serde(flatten)]
    pub saga: &'a SagaView,
    pub message: String,
    pub failed_step: Option<&'a str>,
}

/// The message made of step names, for a definition without `messages`.
fn generic_message(kind: &str, saga: &SagaView, failed: Option<&str>) -> String {
    let undone: Vec<&str> = saga
        .steps
        .iter()
        .skip_while(|s| s.status != "failed")
        .skip(1)
        .filter(|s| s.status == "succeeded")
        .map(|s| s.step.as_str())
        .collect();
    let (id, name) = (&saga.id, &saga.definition);
    match failed {
        _ if kind == STUCK => format!(
            "Saga {id} ({name}) is stuck compensating: {} has failed for longer than STUCK_AFTER_SECS",
            saga.steps
                .last()
                .map_or("its compensation", |s| s.step.as_str())
        ),
        None => format!("Saga {id} ({name}) succeeded"),
        Some(step) if undone.is_empty() => {
            format!("Saga {id} ({name}) failed at {step}; nothing to undo")
        }
        Some(step) => format!(
            "Saga {id} ({name}) failed at {step}; undone: {}",
            undone.join(", ")
        ),
    }
}

/// The definition's own message for the event, if it has one that renders;
/// one that does not (a field missing from the input, say) is logged, and
/// the event gets the generic message instead of none.
fn custom_message(
    kind: &str,
    saga: &SagaView,
    failed: Option<&str>,
    definition: &Definition,
) -> Option<String> {
    let name = match kind {
        STUCK => "compensation_stuck",
        "saga.succeeded" => "succeeded",
        _ => "failed",
    };
    let template = definition.messages.get(name)?;
    let status = |step: &str| {
        saga.steps
            .iter()
            .rev()
            .find(|s| s.step == step)
            .map(|s| s.status)
    };
    // The forward steps that had succeeded and whose compensation ran.
    let undone: Vec<String> = definition
        .steps
        .iter()
        .filter(|s| status(&s.forward.step) == Some("succeeded"))
        .filter(|s| {
            s.compensation
                .as_ref()
                .is_some_and(|c| status(&c.step) == Some("succeeded"))
        })
        .map(|s| s.forward.step.to_string())
        .collect();
    let context = minijinja::context! {
        saga => minijinja::context! {
            id => &saga.id,
            definition => &saga.definition,
            version => saga.definition_version,
        },
        input => minijinja::Value::from(minijinja::value::Serde(&saga.input)),
        failed_step => failed,
        undone => undone,
        last_step => saga.steps.last().map(|s| s.step.clone()),
    };
    match template.render(context) {
        Ok(message) => Some(message.trim().to_owned()),
        Err(err) => {
            tracing::warn!(
                saga_id = saga.id,
                definition = saga.definition,
                %err,
                "the definition's message does not render; the event gets the generic one"
            );
            None
        }
    }
}

/// The deliveries of a saga's end, claimed for this process's worker, and
/// the saga as its driver saw it (none when it did not see all of it: a
/// saga taken over is read back).
#[derive(Debug)]
pub struct HandOff {
    pub deliveries: Vec<Due>,
    pub saga: Option<Arc<SagaView>>,
    pub definition: Arc<Definition>,
}

/// The hand-off queue from the drivers to the worker.
#[derive(Debug)]
pub struct HandOffs {
    sender: mpsc::Sender<HandOff>,
    receiver: Mutex<Option<mpsc::Receiver<HandOff>>>,
}

/// The most hand-offs queued for the worker. Past them a hand-off is
/// dropped, not waited for: its deliveries stay claimed and are sent when
/// the claim runs out, so a slow receiver never holds up a driver.
const HAND_OFF_QUEUE: usize = 4096;

impl HandOffs {
    pub fn new() -> Self {
        let (sender, receiver) = mpsc::channel(HAND_OFF_QUEUE);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Hands `deliveries` over, if there are any.
    pub fn send(
        &self,
        deliveries: Vec<Due>,
        saga: Option<Arc<SagaView>>,
        definition: &Arc<Definition>,
    ) {
        if deliveries.is_empty() {
            return;
        }
        let definition = Arc::clone(definition);
        let hand_off = HandOff {
            deliveries,
            saga,
            definition,
        };
        if let Err(err) = self.sender.try_send(hand_off) {
            tracing::debug!(%err, "webhook hand-off dropped; its deliveries go when their claim runs out");
        }
    }

    /// The worker's end; `None` once taken.
    pub fn take(&self) -> Option<mpsc::Receiver<HandOff>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Default for HandOffs {
    fn default() -> Self {
        Self::new()
    }
}

/// The most deliveries claimed and sent at once: the statements of a
/// batch (claim, read the sagas, record the outcomes) are the same few
/// whatever its size, so that under load delivery costs the database
/// little per saga.
const BATCH: usize = 256;

/// The delivery worker, until `shutdown`: sends what the drivers here hand
/// over as it comes, and every `WEBHOOK_POLL_MS` (at once again while
/// there are more) claims the due deliveries and sends them; each batch's
/// outcomes are recorded together.
pub async fn deliver(engine: Arc<Engine>, config: WebhookConfig, shutdown: CancellationToken) {
    let Some(mut hand_offs) = engine.take_hand_offs() else {
        tracing::error!("the webhook hand-offs were taken already; no webhook is sent");
        return;
    };
    let timeout = Duration::from_millis(config.webhook_timeout_ms);
    // A redirect is an answer that is not 2xx, as the convention has it:
    // following one would send the event somewhere nobody subscribed.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .pool_max_idle_per_host(BATCH)
        .tcp_nodelay(true)
        .build();
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "cannot build the webhook client; no webhook is sent");
            return;
        }
    };
    let claim_secs = config.claim().as_secs_f64();
    let mut poll = tokio::time::interval(Duration::from_millis(config.webhook_poll_ms.max(10)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender = Sender {
        engine: &engine,
        client: &client,
        config: &config,
        held: None,
    };
    // A stop abandons the batch under way: what it claimed is sent again
    // when the claim runs out, by whichever worker polls first.
    while let Some(()) = shutdown
        .run_until_cancelled(sender.next(&mut poll, &mut hand_offs, claim_secs))
        .await
    {}
}

impl Sender<'_> {
    /// Waits for the next work, the poll or a hand-off (the poll first:
    /// under load hand-offs come without a pause, and retries must not wait
    /// for one), and does it.
    async fn next(
        &mut self,
        poll: &mut tokio::time::Interval,
        hand_offs: &mut mpsc::Receiver<HandOff>,
        claim_secs: f64,
    ) {
        tokio::select! {
            biased;
            _ = poll.tick() => loop {
                match self.due(claim_secs).await {
                    Ok(claimed) if claimed == BATCH => continue,
                    Ok(_) => break,
                    Err(err) => {
                        // What was claimed is due again when its claim runs out.
                        tracing::warn!(%err, "cannot deliver webhooks now; will retry");
                        break;
                    }
                }
            },
            Some(first) = hand_offs.recv() => {
                // What comes within GATHER goes in the same batch.
                let mut batch = Vec::new();
                first.add_to(&mut batch);
                let until = tokio::time::Instant::now() + GATHER;
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(until, hand_offs.recv()).await {
                        Ok(Some(more)) => more.add_to(&mut batch),
                        _ => break,
                    }
                }
                if let Err(err) = self.send(batch).await {
                    tracing::warn!(%err, "cannot deliver webhooks now; will retry");
                }
            }
        }
    }
}

/// How long the worker gathers hand-offs into one batch after the first.
/// Every batch is one statement and one commit of its outcomes: under load
/// a batch per hand-off cost the database more than the deliveries did.
const GATHER: Duration = Duration::from_millis(20);

impl HandOff {
    fn add_to(self, batch: &mut Vec<Item>) {
        let Self {
            deliveries,
            saga,
            definition,
        } = self;
        batch.extend(deliveries.into_iter().map(|due| Item {
            due,
            saga: saga.clone(),
            definition: Some(Arc::clone(&definition)),
        }));
    }
}

/// One delivery to attempt, with the saga and its definition when they are
/// known (handed over) rather than to read.
struct Item {
    due: Due,
    saga: Option<Arc<SagaView>>,
    definition: Option<Arc<Definition>>,
}

/// What sending a batch needs.
struct Sender<'a> {
    engine: &'a Engine,
    client: &'a reqwest::Client,
    config: &'a WebhookConfig,
    /// The worker's connection, kept from one batch to the next (one taken
    /// back from the pool is pinged first, a round trip more a batch).
    held: Option<PoolConnection<Postgres>>,
}

impl Sender<'_> {
    /// Runs `query` on the worker's connection, within the engine's time
    /// limit for a query.
    async fn db<T>(
        &mut self,
        query: impl AsyncFnOnce(&mut sqlx::PgConnection) -> sqlx::Result<T>,
    ) -> sqlx::Result<T> {
        let (pool, limit) = (self.engine.pool(), self.engine.db_timeout());
        let result = common::db::bounded_on(pool, &mut self.held, limit, query).await;
        // After an outage the next batch takes another connection.
        if result.as_ref().is_err_and(common::db::is_outage) {
            self.held = None;
        }
        result
    }

    /// Claims the due deliveries and sends them. Returns how many were
    /// claimed.
    async fn due(&mut self, claim_secs: f64) -> anyhow::Result<usize> {
        let limit = i64::try_from(BATCH).unwrap_or(i64::MAX);
        let due = self
            .db(async |conn| {
                store::webhooks::claim_due(conn, self.engine.owner(), limit, claim_secs).await
            })
            .await?;
        let claimed = due.len();
        let items = due.into_iter().map(|due| Item {
            due,
            saga: None,
            definition: None,
        });
        self.send(items.collect()).await?;
        Ok(claimed)
    }

    /// Sends a batch together, reading back the sagas not handed over, and
    /// records the outcomes in one statement.
    async fn send(&mut self, mut items: Vec<Item>) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut unread: Vec<String> = items
            .iter()
            .filter(|item| item.saga.is_none())
            .map(|item| item.due.saga_id.clone())
            .collect();
        if !unread.is_empty() {
            unread.sort();
            unread.dedup();
            let read = self.read(&unread).await?;
            for item in &mut items {
                if item.saga.is_none()
                    && let Some((saga, definition)) = read.get(&item.due.saga_id)
                {
                    item.saga = Some(Arc::clone(saga));
                    item.definition = definition.clone();
                }
            }
        }
        let sends = items.iter().map(|item| async {
            let outcome = match &item.saga {
                Some(saga) => {
                    attempt(self.client, &item.due, saga, item.definition.as_deref()).await
                }
                None => Err(anyhow::anyhow!("saga {} is gone", item.due.saga_id)),
            };
            outcome_of(self.config, &item.due, outcome)
        });
        let outcomes = futures::future::join_all(sends).await;
        let give_up = Duration::from_secs(24 * 3600).as_secs_f64();
        self.db(async |conn| store::webhooks::record(conn, &outcomes, give_up).await)
            .await?;
        Ok(())
    }

    /// The sagas `ids` as the API shows them, with their definitions.
    async fn read(
        &mut self,
        ids: &[String],
    ) -> anyhow::Result<HashMap<String, (Arc<SagaView>, Option<Arc<Definition>>)>> {
        let (sagas, logs) = self
            .db(async |conn| {
                let sagas = store::find_all(&mut *conn, ids).await?;
                let logs = store::logs(&mut *conn, ids).await?;
                Ok((sagas, logs))
            })
            .await?;
        let mut by_saga: HashMap<String, Vec<store::LogRecord>> = HashMap::new();
        for log in logs {
            by_saga.entry(log.saga_id.clone()).or_default().push(log);
        }
        let mut views = HashMap::new();
        for saga in sagas {
            let definition = self
                .engine
                .definition(&saga.definition, Some(saga.definition_version))
                .await?;
            let own = by_saga.remove(&saga.saga_id).unwrap_or_default();
            let id = saga.saga_id.clone();
            let view = SagaView::new(saga, &own, |step| {
                definition.as_ref().is_none_or(|d| d.is_forward(step))
            });
            views.insert(id, (Arc::new(view), definition));
        }
        Ok(views)
    }
}

/// What an attempt's answer means for its delivery.
fn outcome_of(
    config: &WebhookConfig,
    due: &Due,
    answer: anyhow::Result<u16>,
) -> store::webhooks::Outcome {
    let (delivered, last_status, last_error) = match &answer {
        Ok(status) if (200..300).contains(status) => (true, Some(*status), None),
        Ok(status) => (
            false,
            Some(*status),
            Some(format!("answered {status}; not 2xx")),
        ),
        Err(err) => (false, None, Some(format!("{err:#}"))),
    };
    if !delivered {
        tracing::warn!(
            delivery = due.id,
            saga_id = due.saga_id,
            attempt = due.attempts,
            error = last_error.as_deref(),
            "webhook not delivered; will retry"
        );
    }
    // 1, 2, 4 ... times the first delay, up to an hour.
    let doublings = u32::try_from(due.attempts.saturating_sub(1).min(20)).unwrap_or(20);
    let retry = Duration::from_millis(config.webhook_retry_initial_ms)
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(Duration::from_secs(3600));
    store::webhooks::Outcome {
        saga_id: due.saga_id.clone(),
        id: due.id.clone(),
        delivered,
        last_status: last_status.map(i32::from),
        last_error,
        retry_secs: retry.as_secs_f64(),
    }
}

/// Builds the event, signs it and sends it: the receiver's status.
async fn attempt(
    client: &reqwest::Client,
    due: &Due,
    view: &SagaView,
    definition: Option<&Definition>,
) -> anyhow::Result<u16> {
    let body = serde_json::to_vec(&event(&due.kind, due.created_at, view, definition))?;
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign(&due.secret, &due.id, timestamp, &body)?;
    let response = client
        .post(&due.url)
        .header("content-type", "application/json")
        .header("webhook-id", &due.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .context("cannot reach the webhook URL")?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example.
    #[test]
    fn signs_as_the_specification_does() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_whsec_and_32_bytes() {
        let secret = new_secret();
        assert_eq!(key(&secret).unwrap().len(), 32);
        assert!(key("nope").is_err());
        assert!(key("whsec_%%").is_err());
    }
}
