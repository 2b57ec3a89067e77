//! Every read and write of `orchestrator.sagas` and `orchestrator.saga_log`.
//!
//! A saga moves by [`transition`]: one statement that updates the saga row
//! only if its `version` is the one the caller read (the fence) and appends
//! the step events of that move to the log. Recording a step's outcome and
//! the start of the next step is one such write.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::webhooks::Due;
use crate::definition::Position;
use crate::saga::{SagaStatus, StepEvent};

/// A row of `orchestrator.sagas`.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    pub saga_id: String,
    pub definition: String,
    pub status: SagaStatus,
    pub definition_version: i32,
    pub cursor: i32,
    pub input: Value,
    pub version: i64,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A row of `orchestrator.saga_log`.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub saga_id: String,
    pub seq: i32,
    pub step: String,
    pub status: StepEvent,
    pub attempt: i32,
    pub detail: Value,
    pub at: DateTime<Utc>,
}

/// The sagas a batch created, by saga id, with the time written (the
/// transaction's, as in the rows).
pub type Created = HashMap<String, DateTime<Utc>>;

/// The transitions a batch applied, by saga id and the version they moved
/// from, with the time written.
pub type Applied = HashMap<(String, i64), DateTime<Utc>>;

/// What a batch wrote.
#[derive(Debug, Default)]
pub struct Wrote {
    pub created: Created,
    pub applied: Applied,
    /// The webhook deliveries of the sagas the batch ended, by saga id.
    pub deliveries: HashMap<String, Vec<Due>>,
}

/// A step event to append.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: i32,
    pub step: Arc<str>,
    pub event: StepEvent,
    pub attempt: i32,
    pub detail: Value,
}

/// One move of one saga.
#[derive(Debug, Clone)]
pub struct Transition {
    pub saga_id: String,
    /// The version the mover read; the write succeeds only if it still holds.
    pub version: i64,
    pub position: Position,
    pub log: Vec<LogEntry>,
}

/// A saga to create.
#[derive(Debug, Clone)]
pub struct NewSaga {
    pub saga_id: String,
    pub definition: Arc<str>,
    pub version: i32,
    /// The input, its defaults filled in.
    pub input: Arc<Value>,
    pub first_step: Arc<str>,
    pub deadline: Option<DateTime<Utc>>,
}

/// Inserts `new`, owned by `owner`, with its first step logged as started.
/// Returns `false` if a saga of that id exists already.
pub async fn create(
    pool: &PgPool,
    new: &NewSaga,
    owner: &str,
    lease_secs: f64,
) -> sqlx::Result<bool> {
    let wrote = write(
        pool,
        std::slice::from_ref(new),
        &[] as &[Transition],
        owner,
        lease_secs,
        None,
    )
    .await?;
    Ok(wrote.created.contains_key(&new.saga_id))
}

/// Applies `t` if the saga's version is still `t.version`. Returns `false`
/// when it is not: another process owns the saga now, and the caller must
/// stop driving it.
pub async fn transition(pool: &PgPool, t: &Transition, lease_secs: f64) -> sqlx::Result<bool> {
    let applied = transitions(pool, std::slice::from_ref(t), lease_secs).await?;
    Ok(applied.contains_key(&(t.saga_id.clone(), t.version)))
}

/// Applies a batch of transitions of different sagas in one statement: see
/// [`write`].
pub async fn transitions<T: Borrow<Transition>>(
    db: impl sqlx::PgExecutor<'_>,
    batch: &[T],
    lease_secs: f64,
) -> sqlx::Result<Applied> {
    Ok(write(db, &[], batch, "", lease_secs, None).await?.applied)
}

/// Writes a batch in one statement (one round trip, one commit): the new
/// sagas `creates` (of distinct ids), owned by `owner`, each with its
/// first step logged as started, and the transitions `moves` of sagas
/// created before, each applied only if its saga's version is still the
/// one it read. Returns the sagas created and the transitions applied (by
/// saga id and the version they moved from), each with the time written
/// (the transaction's); an id that had a saga already is not created, a
/// fenced transition is not applied.
///
/// A saga's end enqueues its webhook deliveries in the same statement (the
/// outbox), and returns them. With `hand_off` they are claimed for
/// `owner`'s worker, which is handed them at once, for that many seconds;
/// without, they are due now, for whichever worker polls first.
///
/// Every part of the statement sees the same snapshot, so a move of a saga
/// created in the same batch would be fenced; none is ever sent, since a
/// driver moves its saga only once the create has been answered.
#[tracing::instrument(skip_all, fields(creates = creates.len(), moves = moves.len()), err)]
pub async fn write<T: Borrow<Transition>>(
    db: impl sqlx::PgExecutor<'_>,
    creates: &[NewSaga],
    moves: &[T],
    owner: &str,
    lease_secs: f64,
    hand_off: Option<f64>,
) -> sqlx::Result<Wrote> {
    let new_ids: Vec<&str> = creates.iter().map(|n| n.saga_id.as_str()).collect();
    let definitions: Vec<&str> = creates.iter().map(|n| &*n.definition).collect();
    let definition_versions: Vec<i32> = creates.iter().map(|n| n.version).collect();
    let inputs: Vec<&Value> = creates.iter().map(|n| &*n.input).collect();
    let deadlines: Vec<Option<DateTime<Utc>>> = creates.iter().map(|n| n.deadline).collect();
    let first_steps: Vec<&str> = creates.iter().map(|n| &*n.first_step).collect();

    let moves: Vec<&Transition> = moves.iter().map(Borrow::borrow).collect();
    let saga_ids: Vec<&str> = moves.iter().map(|t| t.saga_id.as_str()).collect();
    let versions: Vec<i64> = moves.iter().map(|t| t.version).collect();
    let statuses: Vec<&str> = moves.iter().map(|t| t.position.status().as_str()).collect();
    let cursors: Vec<i32> = moves.iter().map(|t| t.position.cursor()).collect();
    let rows = moves.iter().map(|t| t.log.len()).sum();
    let mut log = LogColumns::with_capacity(rows);
    for t in &moves {
        for e in &t.log {
            log.sagas.push(t.saga_id.as_str());
            log.versions.push(t.version);
            log.seqs.push(e.seq);
            log.steps.push(&e.step);
            log.events.push(e.event.as_str());
            log.attempts.push(e.attempt);
            log.details.push(&e.detail);
        }
    }
    let rows = sqlx::query!(
        r#"WITH new AS (
               SELECT * FROM unnest($1::text[], $2::text[], $6::int4[], $3::jsonb[],
                                    $4::timestamptz[], $5::text[])
                   AS n(saga_id, definition, definition_version, input, deadline, first_step)),
           created AS (
               INSERT INTO orchestrator.sagas
                   (saga_id, definition, status, definition_version, cursor, input, owner,
                    lease_until, deadline)
               SELECT saga_id, definition, 'running', definition_version, 0, input, $7,
                      now() + make_interval(secs => $8), deadline
               FROM new
               ON CONFLICT (saga_id) DO NOTHING
               RETURNING saga_id),
           created_log AS (
               INSERT INTO orchestrator.saga_log (saga_id, seq, step, status, attempt, detail)
               SELECT n.saga_id, 1, n.first_step, 'started', 1,
                      jsonb_build_object('idempotency_key', n.saga_id || ':' || n.first_step)
               FROM new n WHERE n.saga_id = ANY (ARRAY(SELECT saga_id FROM created))),
           moves AS (
               SELECT * FROM unnest($9::text[], $10::int8[], $11::text[], $12::int4[])
                   AS m(saga_id, version, status, cursor)),
           moved AS (
               UPDATE orchestrator.sagas s
               SET status = m.status::orchestrator.saga_status,
                   cursor = m.cursor,
                   version = s.version + 1,
                   lease_until = CASE WHEN m.status IN ('succeeded', 'failed') THEN NULL
                                      ELSE now() + make_interval(secs => $8) END,
                   owner = CASE WHEN m.status IN ('succeeded', 'failed') THEN NULL ELSE s.owner END,
                   updated_at = now()
               FROM moves m
               WHERE s.saga_id = m.saga_id AND s.version = m.version
               RETURNING s.saga_id, m.version AS from_version, m.status, s.definition),
           -- A saga's end notifies every subscription that wants it, in
           -- the same transaction (the webhook outbox).
           notified AS (
               INSERT INTO orchestrator.webhook_deliveries
                   (id, webhook, saga_id, type, attempts, next_attempt_at, owner)
               SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), w.id, d.saga_id,
                      'saga.' || d.status, CASE WHEN $20::float8 IS NULL THEN 0 ELSE 1 END,
                      now() + make_interval(secs => coalesce($20, 0)),
                      CASE WHEN $20 IS NOT NULL THEN $7 END
               FROM moved d CROSS JOIN orchestrator.webhooks w
               WHERE d.status IN ('succeeded', 'failed')
                 AND (w.event_types = '{}' OR 'saga.' || d.status = ANY (w.event_types))
                 AND (w.definitions = '{}' OR d.definition = ANY (w.definitions))
               RETURNING id, webhook, saga_id, type, attempts, created_at),
           moved_log AS (
               INSERT INTO orchestrator.saga_log (saga_id, seq, step, status, attempt, detail)
               SELECT l.saga_id, l.seq, l.step, l.status::orchestrator.step_event, l.attempt, l.detail
               FROM unnest($13::text[], $14::int8[], $15::int4[], $16::text[], $17::text[],
                           $18::int4[], $19::jsonb[])
                    AS l(saga_id, version, seq, step, status, attempt, detail)
               -- Only the rows of the moves applied: a stale mover's rows
               -- for the same saga may be in the same batch.
               WHERE (l.saga_id, l.version) = ANY (ARRAY(SELECT (saga_id, from_version) FROM moved)))
           -- A created saga comes back without a version, a delivery with
           -- its id.
           SELECT saga_id AS "saga_id!", NULL::int8 AS from_version, now() AS "at!",
                  NULL::text AS delivery, NULL::text AS url, NULL::text AS secret,
                  NULL::text AS kind, NULL::int4 AS attempts
           FROM created
           UNION ALL
           SELECT saga_id, from_version, now(), NULL, NULL, NULL, NULL, NULL FROM moved
           UNION ALL
           SELECT n.saga_id, NULL, n.created_at, n.id, w.url, w.secret, n.type, n.attempts
           FROM notified n JOIN orchestrator.webhooks w ON w.id = n.webhook"#,
        &new_ids as &[&str],
        &definitions as &[&str],
        &inputs as &[&Value],
        &deadlines as &[Option<DateTime<Utc>>],
        &first_steps as &[&str],
        &definition_versions,
        owner,
        lease_secs,
        &saga_ids as &[&str],
        &versions,
        &statuses as &[&str],
        &cursors,
        &log.sagas as &[&str],
        &log.versions,
        &log.seqs,
        &log.steps as &[&str],
        &log.events as &[&str],
        &log.attempts,
        &log.details as &[&Value],
        hand_off,
    )
    .fetch_all(db)
    .await?;
    let mut wrote = Wrote::default();
    for row in rows {
        match (
            row.from_version,
            row.delivery,
            row.url,
            row.secret,
            row.kind,
        ) {
            (Some(version), ..) => {
                wrote.applied.insert((row.saga_id, version), row.at);
            }
            (None, Some(id), Some(url), Some(secret), Some(kind)) => {
                let due = Due {
                    id,
                    url,
                    secret,
                    saga_id: row.saga_id.clone(),
                    kind,
                    attempts: row.attempts.unwrap_or(0),
                    created_at: row.at,
                };
                wrote.deliveries.entry(row.saga_id).or_default().push(due);
            }
            (None, ..) => {
                wrote.created.insert(row.saga_id, row.at);
            }
        }
    }
    Ok(wrote)
}

/// The log rows of a batch of transitions, a column each, as the statement
/// takes them.
struct LogColumns<'a> {
    sagas: Vec<&'a str>,
    versions: Vec<i64>,
    seqs: Vec<i32>,
    steps: Vec<&'a str>,
    events: Vec<&'a str>,
    attempts: Vec<i32>,
    details: Vec<&'a Value>,
}

impl LogColumns<'_> {
    fn with_capacity(rows: usize) -> Self {
        Self {
            sagas: Vec::with_capacity(rows),
            versions: Vec::with_capacity(rows),
            seqs: Vec::with_capacity(rows),
            steps: Vec::with_capacity(rows),
            events: Vec::with_capacity(rows),
            attempts: Vec::with_capacity(rows),
            details: Vec::with_capacity(rows),
        }
    }
}

/// When `t` was written, if it was: its first log row is there, as `t` wrote
/// it. For a write whose answer was lost, whose retry then found the saga
/// moved on.
pub async fn was_written(
    db: impl sqlx::PgExecutor<'_>,
    t: &Transition,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    let Some(first) = t.log.first() else {
        return Ok(None);
    };
    sqlx::query_scalar!(
        r#"SELECT at FROM orchestrator.saga_log
           WHERE saga_id = $1 AND seq = $2 AND step = $3
             AND status = $4::text::orchestrator.step_event AND attempt = $5 AND detail = $6"#,
        t.saga_id,
        first.seq,
        &*first.step,
        first.event.as_str(),
        first.attempt,
        first.detail,
    )
    .fetch_optional(db)
    .await
}

/// The database's clock.
pub async fn now(pool: &PgPool) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(pool)
        .await
}

/// The saga `saga_id`, if any.
#[tracing::instrument(skip_all, fields(%saga_id), err)]
pub async fn find(
    db: impl sqlx::PgExecutor<'_>,
    saga_id: &str,
) -> sqlx::Result<Option<SagaRecord>> {
    sqlx::query_as!(
        SagaRecord,
        r#"SELECT saga_id, definition, status AS "status: SagaStatus", definition_version, cursor,
                  input, version, owner, created_at, updated_at
           FROM orchestrator.sagas WHERE saga_id = $1"#,
        saga_id,
    )
    .fetch_optional(db)
    .await
}

/// The sagas of `saga_ids` that exist, in no order.
pub async fn find_all(
    db: impl sqlx::PgExecutor<'_>,
    saga_ids: &[String],
) -> sqlx::Result<Vec<SagaRecord>> {
    sqlx::query_as!(
        SagaRecord,
        r#"SELECT saga_id, definition, status AS "status: SagaStatus", definition_version, cursor,
                  input, version, owner, created_at, updated_at
           FROM orchestrator.sagas WHERE saga_id = ANY ($1)"#,
        saga_ids,
    )
    .fetch_all(db)
    .await
}

/// Which sagas a page lists.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub definition: Option<&'a str>,
    pub status: Option<SagaStatus>,
    /// Only the sagas whose current compensation has been failing for
    /// longer than this many seconds: its first `retrying` row is older.
    pub stuck_after_secs: Option<f64>,
}

/// A page of sagas, newest first, those `filter` lets through, strictly
/// before the cursor `(created_at, saga_id)`.
#[tracing::instrument(skip_all, err)]
pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    filter: &Filter<'_>,
    before: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> sqlx::Result<Vec<SagaRecord>> {
    let Filter {
        definition,
        status,
        stuck_after_secs,
    } = *filter;
    let (before_at, before_id) = before.unzip();
    sqlx::query_as!(
        SagaRecord,
        r#"SELECT saga_id, definition, status AS "status: SagaStatus", definition_version, cursor,
                  input, version, owner, created_at, updated_at
           FROM orchestrator.sagas
           WHERE ($1::text IS NULL OR status = $1::text::orchestrator.saga_status)
             AND ($2::timestamptz IS NULL OR (created_at, saga_id) < ($2, $3::text))
             AND ($5::text IS NULL OR definition = $5)
             AND ($6::float8 IS NULL OR (status = 'compensating'
                   AND orchestrator.compensation_stuck(saga_id, $6)))
           ORDER BY created_at DESC, saga_id DESC
           LIMIT $4"#,
        status.map(SagaStatus::as_str),
        before_at,
        before_id,
        limit,
        definition,
        stuck_after_secs,
    )
    .fetch_all(db)
    .await
}

/// How many sagas are in each status, of one definition or of all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub running: i64,
    pub compensating: i64,
    /// Compensating, and stuck ([`Filter::stuck_after_secs`]).
    pub stuck: i64,
    /// Counted up to the `limit` given to [`counts`].
    pub succeeded: i64,
    /// Counted up to the `limit` given to [`counts`].
    pub failed: i64,
    /// The newest saga's id: it changes when a saga starts, even once the
    /// ended counts have reached their limit.
    pub newest: Option<String>,
}

/// The sagas of `definition` (of every definition when `None`) in each
/// status. The unfinished ones are counted exactly, through the partial
/// index that holds only them (as many as are in flight); the ended ones
/// only up to `limit`, so that a count costs the same over a million sagas
/// as over a thousand.
#[tracing::instrument(skip_all, err)]
pub async fn counts(
    db: impl sqlx::PgExecutor<'_>,
    definition: Option<&str>,
    stuck_after_secs: f64,
    limit: i64,
) -> sqlx::Result<Counts> {
    sqlx::query_as!(
        Counts,
        r#"SELECT
             count(*) FILTER (WHERE status = 'running') AS "running!",
             count(*) FILTER (WHERE status = 'compensating') AS "compensating!",
             count(*) FILTER (WHERE status = 'compensating'
                              AND orchestrator.compensation_stuck(saga_id, $2)) AS "stuck!",
             (SELECT count(*) FROM (
                 SELECT FROM orchestrator.sagas
                 WHERE status = 'succeeded' AND ($1::text IS NULL OR definition = $1)
                 LIMIT $3) s) AS "succeeded!",
             (SELECT count(*) FROM (
                 SELECT FROM orchestrator.sagas
                 WHERE status = 'failed' AND ($1::text IS NULL OR definition = $1)
                 LIMIT $3) f) AS "failed!",
             (SELECT saga_id FROM orchestrator.sagas
              WHERE $1::text IS NULL OR definition = $1
              ORDER BY created_at DESC, saga_id DESC LIMIT 1) AS newest
           FROM orchestrator.sagas
           WHERE status IN ('running', 'compensating')
             AND ($1::text IS NULL OR definition = $1)"#,
        definition,
        stuck_after_secs,
        limit,
    )
    .fetch_one(db)
    .await
}

/// The log of every saga in `saga_ids`, in order within each saga.
#[tracing::instrument(skip_all, err)]
pub async fn logs(
    db: impl sqlx::PgExecutor<'_>,
    saga_ids: &[String],
) -> sqlx::Result<Vec<LogRecord>> {
    sqlx::query_as!(
        LogRecord,
        // One key lookup per saga (a lateral join on equality): `= ANY($1)`
        // can be planned as a scan of the whole log.
        r#"SELECT l.saga_id AS "saga_id!", l.seq AS "seq!", l.step AS "step!",
                  l.status AS "status!: StepEvent", l.attempt AS "attempt!", l.detail AS "detail!",
                  l.at AS "at!"
           FROM unnest($1::text[]) AS t(saga_id)
           CROSS JOIN LATERAL (
               SELECT saga_id, seq, step, status, attempt, detail, at
               FROM orchestrator.saga_log WHERE saga_id = t.saga_id ORDER BY seq) l
           ORDER BY l.saga_id, l.seq"#,
        saga_ids,
    )
    .fetch_all(db)
    .await
}

/// Gives back the leases of `owner`'s unfinished sagas, so that another
/// process may take them over at once.
#[tracing::instrument(skip_all, err)]
pub async fn release_leases(pool: &PgPool, owner: &str) -> sqlx::Result<u64> {
    let released = sqlx::query!(
        r#"UPDATE orchestrator.sagas SET owner = NULL, lease_until = NULL
           WHERE owner = $1 AND status IN ('running', 'compensating')"#,
        owner,
    )
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}

/// An unfinished saga this process has just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub saga_id: String,
    pub definition: String,
    pub status: SagaStatus,
    pub definition_version: i32,
    pub cursor: i32,
    pub input: Value,
    /// The answers of the steps that succeeded, by step name (the
    /// compensations' among them: the caller keeps its forward steps').
    pub outputs: Value,
    /// The version after the claim: the claimer's fence.
    pub version: i64,
    pub previous_owner: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    /// The saga's last log row, which is always its current step's.
    pub last_seq: i32,
    pub last_event: StepEvent,
    pub last_attempt: i32,
}

/// Whether [`claim`] would find a saga to take over, claiming nothing.
pub async fn claimable(
    db: impl sqlx::PgExecutor<'_>,
    owner: &str,
    own_before: Option<DateTime<Utc>>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (
               SELECT 1 FROM orchestrator.sagas
               WHERE status IN ('running', 'compensating')
                 AND (lease_until IS NULL OR lease_until < now()
                      OR (owner = $1 AND updated_at < $2::timestamptz))) AS "claimable!""#,
        owner,
        own_before,
    )
    .fetch_one(db)
    .await
}

/// Claims up to `limit` unfinished sagas for `owner`: those whose lease ran
/// out or was handed back and, with `own_before`, those `owner` held before
/// it restarted (last written before then: not those it claimed since).
/// The claim bumps each saga's version, fencing off the previous owner, and
/// is committed before any call is made; `SKIP LOCKED` lets several
/// processes claim at once without waiting on each other.
#[tracing::instrument(skip_all, fields(owner), err)]
pub async fn claim(
    db: impl sqlx::PgExecutor<'_>,
    owner: &str,
    own_before: Option<DateTime<Utc>>,
    lease_secs: f64,
    limit: i64,
) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as!(
        Claimed,
        r#"WITH candidates AS (
               SELECT saga_id, owner FROM orchestrator.sagas
               WHERE status IN ('running', 'compensating')
                 AND (lease_until IS NULL OR lease_until < now()
                      OR (owner = $1 AND updated_at < $4::timestamptz))
               ORDER BY lease_until NULLS FIRST
               LIMIT $3
               FOR UPDATE SKIP LOCKED),
           claimed AS (
               UPDATE orchestrator.sagas s
               SET owner = $1, lease_until = now() + make_interval(secs => $2),
                   version = s.version + 1, updated_at = now()
               FROM candidates c
               WHERE s.saga_id = c.saga_id
               RETURNING s.saga_id, s.definition, s.status, s.definition_version, s.cursor,
                         s.input, s.version, c.owner AS previous_owner, s.deadline)
           SELECT c.saga_id AS "saga_id!", c.definition AS "definition!",
                  c.status AS "status!: SagaStatus",
                  c.definition_version AS "definition_version!", c.cursor AS "cursor!",
                  c.input AS "input!", o.outputs AS "outputs!", c.version AS "version!",
                  c.previous_owner, c.deadline,
                  l.seq AS "last_seq!", l.status AS "last_event!: StepEvent", l.attempt AS "last_attempt!"
           FROM claimed c
           CROSS JOIN LATERAL (
               SELECT seq, status, attempt FROM orchestrator.saga_log
               WHERE saga_id = c.saga_id ORDER BY seq DESC LIMIT 1) l
           CROSS JOIN LATERAL (
               SELECT coalesce(jsonb_object_agg(step, detail), '{}') AS outputs
               FROM orchestrator.saga_log
               WHERE saga_id = c.saga_id AND status = 'succeeded') o"#,
        owner,
        lease_secs,
        limit,
        own_before,
    )
    .fetch_all(db)
    .await
}

/// Locks the saga `saga_id` for an operator's action, in the caller's
/// transaction, and reads it as a claim does. The lock is held only until
/// the action's write commits, never across a call: a driver's write
/// waiting on it then finds the version moved, and is fenced.
pub async fn lock(conn: &mut sqlx::PgConnection, saga_id: &str) -> sqlx::Result<Option<Claimed>> {
    let Some(version) = sqlx::query_scalar!(
        "SELECT version FROM orchestrator.sagas WHERE saga_id = $1 FOR UPDATE",
        saga_id
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    sqlx::query_as!(
        Claimed,
        r#"SELECT s.saga_id, s.definition, s.status AS "status: SagaStatus",
                  s.definition_version, s.cursor, s.input, o.outputs AS "outputs!", s.version,
                  s.owner AS previous_owner, s.deadline,
                  l.seq AS "last_seq!", l.status AS "last_event!: StepEvent",
                  l.attempt AS "last_attempt!"
           FROM orchestrator.sagas s
           CROSS JOIN LATERAL (
               SELECT seq, status, attempt FROM orchestrator.saga_log
               WHERE saga_id = s.saga_id ORDER BY seq DESC LIMIT 1) l
           CROSS JOIN LATERAL (
               SELECT coalesce(jsonb_object_agg(step, detail), '{}') AS outputs
               FROM orchestrator.saga_log
               WHERE saga_id = s.saga_id AND status = 'succeeded') o
           WHERE s.saga_id = $1 AND s.version = $2"#,
        saga_id,
        version,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Applies `t` to a saga locked by [`lock`] and makes `owner` its owner
/// (none once it has ended), in the caller's transaction. Returns the
/// saga's new version and the time written.
pub async fn take_over(
    conn: &mut sqlx::PgConnection,
    t: &Transition,
    owner: &str,
    lease_secs: f64,
) -> sqlx::Result<Option<(i64, DateTime<Utc>)>> {
    let Some(moved) = sqlx::query!(
        r#"UPDATE orchestrator.sagas
           SET status = $3::text::orchestrator.saga_status, cursor = $4, version = version + 1,
               owner = CASE WHEN $3 IN ('succeeded', 'failed') THEN NULL ELSE $5 END,
               lease_until = CASE WHEN $3 IN ('succeeded', 'failed') THEN NULL
                                  ELSE now() + make_interval(secs => $6) END,
               updated_at = now()
           WHERE saga_id = $1 AND version = $2
           RETURNING version, now() AS "at!""#,
        t.saga_id,
        t.version,
        t.position.status().as_str(),
        t.position.cursor(),
        owner,
        lease_secs,
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    if t.position.status().is_terminal() {
        let kind = super::webhooks::ended(t.position.status());
        super::webhooks::enqueue(&mut *conn, &t.saga_id, &kind).await?;
    }
    let mut log = LogColumns::with_capacity(t.log.len());
    for e in &t.log {
        log.seqs.push(e.seq);
        log.steps.push(&e.step);
        log.events.push(e.event.as_str());
        log.attempts.push(e.attempt);
        log.details.push(&e.detail);
    }
    sqlx::query!(
        r#"INSERT INTO orchestrator.saga_log (saga_id, seq, step, status, attempt, detail)
           SELECT $1, l.seq, l.step, l.status::orchestrator.step_event, l.attempt, l.detail
           FROM unnest($2::int4[], $3::text[], $4::text[], $5::int4[], $6::jsonb[])
                AS l(seq, step, status, attempt, detail)"#,
        t.saga_id,
        &log.seqs,
        &log.steps as &[&str],
        &log.events as &[&str],
        &log.attempts,
        &log.details as &[&Value],
    )
    .execute(&mut *conn)
    .await?;
    Ok(Some((moved.version, moved.at)))
}
