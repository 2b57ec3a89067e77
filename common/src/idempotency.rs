//! Idempotent participant calls: the first answer to an `Idempotency-Key` is
//! stored in the same transaction as the call's effect, and a call repeating
//! the key gets that answer back with no second effect.
//!
//! Each participant keeps its keys in its own schema, in a table
//! `<schema>.idempotency_keys (key text primary key, status smallint, body jsonb, ..)`.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::db::Db;
use crate::error::ErrorBody;
use crate::metrics::ParticipantMetrics;
use crate::wire::IDEMPOTENCY_KEY;

/// The longest key accepted.
pub const KEY_MAX_LEN: usize = 200;

/// The request's `Idempotency-Key`, if it sent one.
#[derive(Debug, Clone)]
pub struct Key(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Key(None));
        };
        match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= KEY_MAX_LEN => Ok(Key(Some(key.to_owned()))),
            _ => Err(ErrorBody::new(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {KEY_MAX_LEN} visible ASCII characters"),
            )
            .into_response_with(StatusCode::BAD_REQUEST)),
        }
    }
}

/// An answer as stored and replayed: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// A success answer.
    pub fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    /// An error answer with the standard body.
    pub fn error(status: StatusCode, body: ErrorBody) -> Self {
        Self {
            status,
            body: serde_json::to_value(body).unwrap_or_default(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// Runs `effect` at most once per `key`, in one transaction with the stored
/// answer, on `conn`. `effect` answers `Ok` for every outcome that should be
/// replayed (success and business refusals alike) and `Err` only for
/// unexpected failures, which roll back. `table` is the participant's
/// schema-qualified key table, a constant, never caller input. Without a
/// key the effect simply runs.
///
/// The effect runs first and the key is stored after it, in the same
/// transaction: if the key turns out to be taken (a resent call), the
/// transaction rolls back, undoing whatever the effect did, and the stored
/// first answer is returned. Two copies sent at once meet on the trip's row
/// lock; the second then finds the first's key. This costs one statement
/// less than claiming the key first.
pub async fn once<E>(
    conn: &mut PgConnection,
    table: &'static str,
    key: Key,
    effect: impl AsyncFnOnce(&mut PgConnection) -> Result<Answer, E>,
) -> Result<Called, E>
where
    E: From<sqlx::Error>,
{
    let mut tx = conn.begin().await?;
    let answer = effect(&mut tx).await?;
    let Some(key) = key.0 else {
        tx.commit().await?;
        return Ok(Called::fresh(answer));
    };
    let stored = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (key, status, body) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING"
    )))
    .bind(&key)
    .bind(i16::try_from(answer.status.as_u16()).unwrap_or(500))
    .bind(&answer.body)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if stored {
        tx.commit().await?;
        return Ok(Called::fresh(answer));
    }
    tx.rollback().await?;
    let (status, body): (i16, Value) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, body FROM {table} WHERE key = $1"
    )))
    .bind(&key)
    .fetch_one(&mut *conn)
    .await?;
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    Ok(Called {
        answer: Answer { status, body },
        replayed: true,
    })
}

/// A keyed call's answer, and whether it is the first answer replayed (the
/// effect of this copy undone) rather than a new one.
#[derive(Debug)]
pub struct Called {
    pub answer: Answer,
    pub replayed: bool,
}

impl Called {
    fn fresh(answer: Answer) -> Self {
        Self {
            answer,
            replayed: false,
        }
    }
}

/// A keyed participant call on a connection of `db`: `first` the usual case
/// in one statement (see [`first_time`]), given the key; when it does not
/// apply, `effect` the general way, [`once`]. Every participant action is
/// this sequence. A replay is counted in `metrics`.
pub async fn call<E>(
    db: &Db,
    metrics: &ParticipantMetrics,
    table: &'static str,
    key: Key,
    first: impl AsyncFnOnce(&mut PgConnection, Option<&str>) -> sqlx::Result<Option<Value>>,
    effect: impl AsyncFnOnce(&mut PgConnection) -> Result<Answer, E>,
) -> Result<Called, E>
where
    E: From<sqlx::Error>,
{
    let called = db
        .run(async |conn| {
            if let Some(answer) = first_time(first(&mut *conn, key.0.as_deref())).await? {
                return Ok(Called::fresh(answer));
            }
            once(conn, table, key, effect).await
        })
        .await?;
    if called.replayed {
        metrics.replays.inc();
    }
    Ok(called)
}

/// The usual case in one round trip: a call whose effect applies. `statement`
/// applies the effect and stores its answer under the key (if any) in one
/// statement, committed on its own. It yields the answer's body, or `None`
/// when the effect does not apply (the row's state needs the rules); it
/// fails with a unique violation on the key table when the key is taken,
/// which undoes the whole statement. In both cases this answers `None`, and
/// the caller goes the general way, [`once`], which replays a taken key.
pub async fn first_time(
    statement: impl Future<Output = sqlx::Result<Option<Value>>>,
) -> sqlx::Result<Option<Answer>> {
    match statement.await {
        Ok(body) => Ok(body.map(Answer::ok)),
        Err(sqlx::Error::Database(err))
            if err.is_unique_violation() && err.constraint() == Some("idempotency_keys_pkey") =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// A service error that may be a business answer worth storing (a 409, a
/// 404) rather than an unexpected failure.
pub trait BusinessError: std::error::Error + Sized + 'static {
    /// The answer to store and replay, or `None` for an unexpected failure.
    fn answer(&self) -> Option<Answer>;

    /// The database error behind an unexpected failure, if that is what it
    /// is.
    fn database(&self) -> Option<&sqlx::Error> {
        None
    }

    /// The HTTP answer: the business answer; a 503 when the database is out
    /// (the caller retries; never stored, so the retry runs the action); or
    /// an opaque 500 with the cause chain logged.
    fn respond(self) -> Response {
        match self.answer() {
            Some(answer) => answer.into_response(),
            None => match self.database() {
                Some(err) if crate::db::is_outage(err) => {
                    tracing::warn!(%err, "database unavailable");
                    crate::error::database_unavailable()
                }
                _ => crate::error::internal(&self),
            },
        }
    }
}

/// Turns an effect's result into the answer to store: success as 200 with
/// the body, a business error as its own answer; an unexpected failure
/// stays an error.
pub fn to_answer<E: BusinessError>(result: Result<Value, E>) -> Result<Answer, E> {
    match result {
        Ok(body) => Ok(Answer::ok(body)),
        Err(err) => err.answer().ok_or(err),
    }
}
