//! The webhook subscriptions (`orchestrator.webhooks`) and the outbox of
//! their deliveries (`orchestrator.webhook_deliveries`). The batching
//! writer enqueues a saga's deliveries in the statement that ends it; an
//! operator's action that ends a saga, with [`enqueue`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::saga::SagaStatus;

/// A subscription, as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub definitions: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// One delivery of one event to one subscription, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The `webhook-id` every attempt carries.
    pub id: String,
    pub webhook: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered`, or `failed` (given up after a day).
    pub status: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery claimed for an attempt, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub saga_id: String,
    pub kind: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Enqueues the deliveries of the event `kind` (`saga.failed`, ...) of the
/// saga `saga_id`, in the caller's transaction if it has one.
pub async fn enqueue(db: impl sqlx::PgExecutor<'_>, saga_id: &str, kind: &str) -> sqlx::Result<()> {
    sqlx::query!(
        r#"INSERT INTO orchestrator.webhook_deliveries (id, webhook, saga_id, type)
           SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), w.id, s.saga_id, $2
           FROM orchestrator.sagas s CROSS JOIN orchestrator.webhooks w
           WHERE s.saga_id = $1
             AND (w.event_types = '{}' OR $2 = ANY (w.event_types))
             AND (w.definitions = '{}' OR s.definition = ANY (w.definitions))"#,
        saga_id,
        kind,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The event type of a saga's end.
pub fn ended(status: SagaStatus) -> String {
    format!("saga.{}", status.as_str())
}

/// Adds a subscription; its secret is stored as given.
pub async fn create(
    db: impl sqlx::PgExecutor<'_>,
    id: &str,
    url: &str,
    secret: &str,
    event_types: &[String],
    definitions: &[String],
) -> sqlx::Result<Webhook> {
    sqlx::query_as!(
        Webhook,
        r#"INSERT INTO orchestrator.webhooks (id, url, secret, event_types, definitions)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, url, event_types, definitions, created_at"#,
        id,
        url,
        secret,
        event_types,
        definitions,
    )
    .fetch_one(db)
    .await
}

/// Sets the subscription `config` (WEBHOOK_URL) to `url` and `secret`, or
/// removes it when there is none.
pub async fn configure(
    db: impl sqlx::PgExecutor<'_>,
    configured: Option<(&str, &str)>,
) -> sqlx::Result<()> {
    match configured {
        Some((url, secret)) => sqlx::query!(
            r#"INSERT INTO orchestrator.webhooks (id, url, secret) VALUES ('config', $1, $2)
               ON CONFLICT (id) DO UPDATE SET url = $1, secret = $2,
                   event_types = '{}', definitions = '{}'"#,
            url,
            secret,
        )
        .execute(db)
        .await
        .map(drop),
        None => delete(db, "config").await.map(drop),
    }
}

pub async fn list(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<Webhook>> {
    sqlx::query_as!(
        Webhook,
        r#"SELECT id, url, event_types, definitions, created_at
           FROM orchestrator.webhooks ORDER BY created_at, id"#,
    )
    .fetch_all(db)
    .await
}

/// Removes a subscription and its deliveries; `false` if there was none.
pub async fn delete(db: impl sqlx::PgExecutor<'_>, id: &str) -> sqlx::Result<bool> {
    let deleted = sqlx::query_scalar!(
        r#"WITH gone AS (DELETE FROM orchestrator.webhooks WHERE id = $1 RETURNING id),
                deliveries AS (
                    DELETE FROM orchestrator.webhook_deliveries d USING gone
                    WHERE d.webhook = gone.id)
           SELECT count(*) AS "deleted!" FROM gone"#,
        id
    )
    .fetch_one(db)
    .await?;
    Ok(deleted == 1)
}

/// The deliveries of the saga `saga_id`, oldest first.
pub async fn deliveries(
    db: impl sqlx::PgExecutor<'_>,
    saga_id: &str,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT id, webhook, type AS kind, status, attempts, last_status, last_error,
                  CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at,
                  created_at, delivered_at
           FROM orchestrator.webhook_deliveries WHERE saga_id = $1
           ORDER BY created_at, id"#,
        saga_id,
    )
    .fetch_all(db)
    .await
}

/// Claims up to `limit` due deliveries for one attempt each: the attempt is
/// counted, and the delivery is not due again for `claim_secs` (the claim
/// of a worker that dies runs out, and another sends it). A due delivery
/// whose subscription is gone is failed instead.
pub async fn claim_due(
    db: impl sqlx::PgExecutor<'_>,
    owner: &str,
    limit: i64,
    claim_secs: f64,
) -> sqlx::Result<Vec<Due>> {
    sqlx::query_as!(
        Due,
        r#"WITH due AS (
               SELECT saga_id, id FROM orchestrator.webhook_deliveries
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY next_attempt_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED),
           orphaned AS (
               UPDATE orchestrator.webhook_deliveries d
               SET status = 'failed', last_error = 'its subscription was deleted'
               FROM due
               WHERE d.saga_id = due.saga_id AND d.id = due.id
                 AND NOT EXISTS (SELECT FROM orchestrator.webhooks w WHERE w.id = d.webhook))
           UPDATE orchestrator.webhook_deliveries d
           SET attempts = d.attempts + 1,
               next_attempt_at = now() + make_interval(secs => $2),
               owner = $3
           FROM due, orchestrator.webhooks w
           WHERE d.saga_id = due.saga_id AND d.id = due.id AND w.id = d.webhook
           RETURNING d.id, w.url, w.secret, d.saga_id, d.type AS kind, d.attempts,
                     d.created_at"#,
        limit,
        claim_secs,
        owner,
    )
    .fetch_all(db)
    .await
}

/// Gives back the claims of `owner` (a process restarted under the same
/// identity, or stopping cleanly): its pending deliveries are due at once,
/// for any worker. Returns how many.
pub async fn release_claims(db: impl sqlx::PgExecutor<'_>, owner: &str) -> sqlx::Result<u64> {
    let released = sqlx::query!(
        r#"UPDATE orchestrator.webhook_deliveries
           SET next_attempt_at = now(), owner = NULL
           WHERE status = 'pending' AND owner = $1"#,
        owner,
    )
    .execute(db)
    .await?;
    Ok(released.rows_affected())
}

/// One attempt's outcome, for [`record`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub saga_id: String,
    pub id: String,
    pub delivered: bool,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// When not delivered: due again after this many seconds.
    pub retry_secs: f64,
}

/// Records the outcomes of a batch of attempts in one statement: each
/// delivered, or due again after its `retry_secs` (given up, `failed`, once
/// `give_up_secs` have passed since its event).
pub async fn record(
    db: impl sqlx::PgExecutor<'_>,
    outcomes: &[Outcome],
    give_up_secs: f64,
) -> sqlx::Result<()> {
    let sagas: Vec<&str> = outcomes.iter().map(|o| o.saga_id.as_str()).collect();
    let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
    let delivered: Vec<bool> = outcomes.iter().map(|o| o.delivered).collect();
    let statuses: Vec<Option<i32>> = outcomes.iter().map(|o| o.last_status).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.last_error.as_deref()).collect();
    let retries: Vec<f64> = outcomes.iter().map(|o| o.retry_secs).collect();
    sqlx::query!(
        r#"UPDATE orchestrator.webhook_deliveries d
           SET status = CASE WHEN o.delivered THEN 'delivered'
                             WHEN d.created_at < now() - make_interval(secs => $6) THEN 'failed'
                             ELSE 'pending' END,
               delivered_at = CASE WHEN o.delivered THEN now() END,
               next_attempt_at = now() + make_interval(secs => o.retry_secs),
               last_status = o.last_status, last_error = o.last_error, owner = NULL
           FROM unnest($1::text[], $2::bool[], $3::int4[], $4::text[], $5::float8[], $7::text[])
                AS o(id, delivered, last_status, last_error, retry_secs, saga_id)
           WHERE d.saga_id = o.saga_id AND d.id = o.id AND d.status = 'pending'"#,
        &ids as &[&str],
        &delivered,
        &statuses as &[Option<i32>],
        &errors as &[Option<&str>],
        &retries,
        give_up_secs,
        &sagas as &[&str],
    )
    .execute(db)
    .await?;
    Ok(())
}
