//! Sagas of any definition: start one (`POST /sagas/{definition}`), read
//! one (`GET /sagas/{definition}/{id}`), list them (`GET /sagas`, the stuck
//! ones with `?stuck=true`), and an operator's actions on one
//! (`POST /sagas/{definition}/{id}/retry|resolve|abort`), and how many are
//! in each status (`GET /sagas/counts`).
//!
//! Starting is idempotent by saga id: the same id with the same input joins
//! the saga and starts nothing; with other input, or an id another
//! definition uses, it is a 409.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use common::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ClientAddr, Error, ErrorBody, Result};
use crate::AppState;
use crate::definition::Definition;
use crate::saga::SagaStatus;
use crate::saga::action::{self, Action};
use crate::saga::engine::Start;
use crate::saga::view::SagaView;
use crate::store;

/// The longest `?wait=` accepted, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
/// Ended sagas are counted up to this many (`GET /sagas/counts`).
pub const COUNTED_UP_TO: i64 = 10_000;
/// The longest deadline accepted: a week.
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(counts))
        .routes(routes!(start))
        .routes(routes!(show))
        .routes(routes!(retry))
        .routes(routes!(resolve))
        .routes(routes!(abort))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StartQuery {
    /// Seconds to wait for the saga to end before answering 202 (0 to 60;
    /// default TRIP_WAIT_SECS).
    #[param(value_type = Option<u64>)]
    wait: Option<String>,
    /// The definition's version to run (default: the newest).
    #[param(value_type = Option<i32>)]
    version: Option<String>,
}

/// `POST /sagas/{definition}`'s body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// The saga's id; default: a new UUID. The same id with the same input
    /// joins the saga.
    id: Option<String>,
    /// The saga's input, checked against the definition's input schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    /// Seconds the forward steps may take before the saga compensates.
    deadline_secs: Option<u64>,
}

/// Starts a saga of the definition, or joins the one of that id.
#[utoipa::path(post, path = "/sagas/{definition}", tag = "sagas",
    params(("definition" = String, Path, description = "The definition's name"), StartQuery),
    request_body = StartBody,
    responses(
        (status = 200, description = "The saga has ended", body = SagaView),
        (status = 202, description = "The saga runs; Location names it", body = SagaView),
        (status = 400, description = "The id, the input or a query parameter is not acceptable, or the body is not JSON", body = ErrorBody),
        (status = 404, description = "No such definition or version", body = ErrorBody),
        (status = 409, description = "The id is taken by a saga with another input or definition", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 429, description = "This client sent more starts than START_RATE_PER_CLIENT (Retry-After)", body = ErrorBody),
        (status = 503, description = "No slot for a new saga (Retry-After), or the database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(?definition, id = body.id))]
async fn start(
    State(state): State<AppState>,
    client: ClientAddr,
    Path(definition): Path<String>,
    Query(query): Query<StartQuery>,
    Json(body): Json<StartBody>,
) -> Result<Response> {
    state.take_start(&client)?;
    let wait = state.wait(query.wait.as_deref())?;
    let version = query
        .version
        .as_deref()
        .map(|v| {
            v.parse::<i32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                Error::InvalidQuery(format!("version={v:?} is not a positive whole number"))
            })
        })
        .transpose()?;
    let definition = state.definition(&definition, version).await?;
    let id = body.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (id, input) = checked(&definition, id, body.input)?;
    let deadline_secs = body.deadline_secs.or(state.default_deadline_secs);
    let joined = start_or_join(&state, definition, id, input, deadline_secs, wait)
        .await
        .map_err(|err| match err {
            Error::Conflict { trip_id, fields } => Error::SagaConflict(format!(
                "saga {trip_id} was started with different {}; send the same input to see that saga, or use a new id",
                fields.join(", ")
            )),
            other => other,
        })?;
    let location = format!("/sagas/{}/{}", joined.view.definition, joined.view.id);
    Ok(joined.respond(&*joined.view, &location))
}

/// Checks a saga id, and fills in and checks an input for `definition`.
pub(crate) fn checked(
    definition: &Definition,
    id: String,
    input: Option<Value>,
) -> Result<(String, Value)> {
    saga_id(&id)?;
    let input = definition
        .prepare_input(input.unwrap_or_else(|| Value::Object(Default::default())))
        .map_err(Error::InvalidInput)?;
    Ok((id, input))
}

/// A saga started or joined, and whether it has ended.
pub(crate) struct Joined {
    pub view: Arc<SagaView>,
    pub ended: bool,
}

impl Joined {
    /// 200 with `body` once the saga has ended; else 202 with `Location`.
    pub fn respond(&self, body: &impl Serialize, location: &str) -> Response {
        if self.ended {
            return Json(body).into_response();
        }
        let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
        if let Ok(location) = HeaderValue::from_str(location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// Starts the saga `id` of `definition` with `input` (its defaults filled
/// in), or joins the one of that id if it has the same input, then waits up
/// to `wait` for it to end.
pub(crate) async fn start_or_join(
    state: &AppState,
    definition: Arc<Definition>,
    id: String,
    input: Value,
    deadline_secs: Option<u64>,
    wait: Duration,
) -> Result<Joined> {
    if deadline_secs.is_some_and(|secs| secs == 0 || secs > MAX_DEADLINE_SECS) {
        return Err(Error::InvalidInput(format!(
            "deadline_secs must be from 1 to {MAX_DEADLINE_SECS}"
        )));
    }
    let deadline = deadline_secs
        .and_then(|secs| chrono::Duration::try_seconds(i64::try_from(secs).ok()?))
        .map(|secs| Utc::now() + secs);
    let input = Arc::new(input);
    let start = Start {
        definition: Arc::clone(&definition),
        id: id.clone(),
        input: Arc::clone(&input),
        deadline,
    };
    let created = match state.engine.admit().await {
        Ok(slot) => state.engine.start(start, slot).await?,
        // A start that found no slot is refused at once, unless its saga
        // is driven here: that duplicate costs no slot, and is answered as
        // ever. Refusing costs no read, so that it stays cheap when it
        // matters most.
        Err(overloaded) if !state.engine.is_driving(&id) => return Err(overloaded.into()),
        Err(_) => false,
    };
    if !created {
        // The id has a saga already: join it if it is the same saga.
        let existing = state
            .engine
            .bounded(async |conn| store::find(conn, &id).await)
            .await?
            .ok_or_else(|| Error::Missing(format!("saga {id} is gone")))?;
        if existing.definition != *definition.name {
            return Err(Error::SagaConflict(format!(
                "id {id} is taken by a saga of definition {}; use a new id",
                existing.definition
            )));
        }
        let fields = differing_fields(&existing.input, &input);
        if !fields.is_empty() {
            return Err(Error::Conflict {
                trip_id: id,
                fields,
            });
        }
    }
    if let Some(ended) = state.engine.wait_for_end(&id, wait).await? {
        return Ok(Joined {
            view: ended,
            ended: true,
        });
    }
    let view = load(state, &id).await?;
    Ok(Joined {
        ended: view.status.is_terminal(),
        view: Arc::new(view),
    })
}

/// The top-level fields in which two inputs differ, by name.
fn differing_fields(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return if a == b { vec![] } else { vec!["input".into()] };
    };
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| a.get(*name) != b.get(*name))
        .cloned()
        .collect()
}

impl AppState {
    /// `?wait=` in seconds, or the configured default.
    pub(crate) fn wait(&self, wait: Option<&str>) -> Result<Duration> {
        let Some(wait) = wait else {
            return Ok(self.trip_wait);
        };
        match wait.parse::<u64>() {
            Ok(secs) if secs <= MAX_WAIT_SECS => Ok(Duration::from_secs(secs)),
            _ => Err(Error::InvalidQuery(format!(
                "wait={wait:?} is not a whole number of seconds from 0 to {MAX_WAIT_SECS}"
            ))),
        }
    }

    /// Version `version` of the definition `name` (the newest when None).
    pub(crate) async fn definition(
        &self,
        name: &str,
        version: Option<i32>,
    ) -> Result<Arc<Definition>> {
        self.engine
            .definition(name, version)
            .await?
            .ok_or_else(|| {
                Error::Missing(match version {
                    Some(v) => format!("definition {name} has no version {v}; GET /definitions/{name} lists its versions"),
                    None => format!("no definition {name}; register one with PUT /definitions/{name}"),
                })
            })
    }
}

/// Checks a saga id given in a path or a body.
pub(crate) fn saga_id(id: &str) -> Result<()> {
    common::wire::validate_trip_id(id)
        .map_err(|err| Error::InvalidInput(err.replace("trip id", "saga id")))
}

/// The saga `id` of `definition` (404 when it is of another), with its
/// steps.
pub(crate) async fn load_of(state: &AppState, definition: &str, id: &str) -> Result<SagaView> {
    saga_id(id)?;
    let saga = load(state, id).await?;
    if saga.definition != definition {
        return Err(missing(definition, id));
    }
    Ok(saga)
}

/// The answer for no saga `id` of `definition`.
pub(crate) fn missing(definition: &str, id: &str) -> Error {
    Error::Missing(format!("no saga {id} of definition {definition}"))
}

/// The saga `id`, with its steps.
pub(crate) async fn load(state: &AppState, id: &str) -> Result<SagaView> {
    let read = state.engine.bounded(async |conn| {
        let Some(saga) = store::find(&mut *conn, id).await? else {
            return Ok(None);
        };
        let logs = store::logs(&mut *conn, &[id.to_owned()]).await?;
        Ok(Some((saga, logs)))
    });
    let (saga, logs) = read
        .await?
        .ok_or_else(|| Error::Missing(format!("no saga {id}")))?;
    view(state, saga, &logs).await
}

/// The saga as the API shows it: its definition tells its forward steps.
async fn view(
    state: &AppState,
    saga: store::SagaRecord,
    logs: &[store::LogRecord],
) -> Result<SagaView> {
    let definition = state
        .engine
        .definition(&saga.definition, Some(saga.definition_version))
        .await?;
    Ok(SagaView::new(saga, logs, |step| {
        definition.as_ref().is_none_or(|d| d.is_forward(step))
    }))
}

/// One saga, with its steps.
#[utoipa::path(get, path = "/sagas/{definition}/{id}", tag = "sagas",
    params(
        ("definition" = String, Path, description = "The definition's name"),
        ("id" = String, Path, description = "The saga's id"),
    ),
    responses(
        (status = 200, description = "The saga", body = SagaView),
        (status = 400, description = "The id is not acceptable", body = ErrorBody),
        (status = 404, description = "No saga of that id and definition", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(?definition, ?id))]
async fn show(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
) -> Result<Json<SagaView>> {
    load_of(&state, &definition, &id).await.map(Json)
}

/// An operator action's body: both fields are required, and recorded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Why (1 to 1000 characters).
    #[schema(required)]
    reason: Option<String>,
    /// Who acts (1 to 1000 characters).
    #[schema(required)]
    actor: Option<String>,
}

/// The longest `reason` or `actor` accepted, in characters.
const MAX_ACTION_TEXT: usize = 1000;

/// Retries the saga now: a failed compensation, or a step waiting for its next attempt.
#[utoipa::path(post, path = "/sagas/{definition}/{id}/retry", tag = "actions",
    params(
        ("definition" = String, Path, description = "The definition's name"),
        ("id" = String, Path, description = "The saga's id"),
    ),
    request_body = ActionBody,
    responses(
        (status = 200, description = "The saga, as the action left it (its log has the action's row)", body = SagaView),
        (status = 400, description = "The id is not acceptable, reason or actor is missing, or the body is not JSON", body = ErrorBody),
        (status = 404, description = "No saga of that id and definition", body = ErrorBody),
        (status = 409, description = "The saga's state does not allow the action", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 503, description = "No slot to drive the saga, or the database is unreachable", body = ErrorBody),
    ))]
async fn retry(
    state: State<AppState>,
    path: Path<(String, String)>,
    body: Json<ActionBody>,
) -> Result<Json<SagaView>> {
    act(state, path, body, Action::Retry).await
}

/// Marks the saga ended as it is (an operator has undone by hand what its compensations could not).
#[utoipa::path(post, path = "/sagas/{definition}/{id}/resolve", tag = "actions",
    params(
        ("definition" = String, Path, description = "The definition's name"),
        ("id" = String, Path, description = "The saga's id"),
    ),
    request_body = ActionBody,
    responses(
        (status = 200, description = "The saga, as the action left it (its log has the action's row)", body = SagaView),
        (status = 400, description = "The id is not acceptable, reason or actor is missing, or the body is not JSON", body = ErrorBody),
        (status = 404, description = "No saga of that id and definition", body = ErrorBody),
        (status = 409, description = "The saga's state does not allow the action", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 503, description = "No slot to drive the saga, or the database is unreachable", body = ErrorBody),
    ))]
async fn resolve(
    state: State<AppState>,
    path: Path<(String, String)>,
    body: Json<ActionBody>,
) -> Result<Json<SagaView>> {
    act(state, path, body, Action::Resolve).await
}

/// Stops the saga going forward and compensates what it did.
#[utoipa::path(post, path = "/sagas/{definition}/{id}/abort", tag = "actions",
    params(
        ("definition" = String, Path, description = "The definition's name"),
        ("id" = String, Path, description = "The saga's id"),
    ),
    request_body = ActionBody,
    responses(
        (status = 200, description = "The saga, as the action left it (its log has the action's row)", body = SagaView),
        (status = 400, description = "The id is not acceptable, reason or actor is missing, or the body is not JSON", body = ErrorBody),
        (status = 404, description = "No saga of that id and definition", body = ErrorBody),
        (status = 409, description = "The saga's state does not allow the action", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 503, description = "No slot to drive the saga, or the database is unreachable", body = ErrorBody),
    ))]
async fn abort(
    state: State<AppState>,
    path: Path<(String, String)>,
    body: Json<ActionBody>,
) -> Result<Json<SagaView>> {
    act(state, path, body, Action::Abort).await
}

/// Takes `action` on the saga, and answers the saga as the action left it.
#[tracing::instrument(skip_all, fields(?definition, ?id, action = action.as_str()))]
async fn act(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
    Json(body): Json<ActionBody>,
    action: Action,
) -> Result<Json<SagaView>> {
    saga_id(&id)?;
    let text = |field: &str, value: Option<String>| {
        let value = value.map(|v| v.trim().to_owned()).unwrap_or_default();
        if value.is_empty() || value.chars().count() > MAX_ACTION_TEXT {
            return Err(Error::InvalidInput(format!(
                "{field} is required: say {} in 1 to {MAX_ACTION_TEXT} characters; it is recorded with the action in saga_log",
                if field == "reason" { "why" } else { "who acts" }
            )));
        }
        Ok(value)
    };
    let request = action::Request {
        action,
        reason: text("reason", body.reason)?,
        actor: text("actor", body.actor)?,
    };
    state.engine.act(&definition, &id, &request).await?;
    Ok(Json(load(&state, &id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only sagas of this definition.
    pub(crate) definition: Option<String>,
    /// Only sagas in this status.
    #[param(value_type = Option<SagaStatus>)]
    pub(crate) status: Option<String>,
    /// Sagas per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>)]
    pub(crate) limit: Option<String>,
    /// The `next` of the previous page.
    pub(crate) before: Option<String>,
    /// Only sagas whose compensation has failed for longer than
    /// STUCK_AFTER_SECS.
    #[param(value_type = Option<bool>)]
    pub(crate) stuck: Option<String>,
}

/// A page of sagas.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page<T> {
    pub sagas: Vec<T>,
    /// Pass as `before` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// Sagas, newest first.
#[utoipa::path(get, path = "/sagas", tag = "sagas",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sagas", body = Page<SagaView>),
        (status = 400, description = "A query parameter is not acceptable", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Page<SagaView>>> {
    page(&state, query, None).await.map(Json)
}

/// A page of sagas, newest first, of `definition` when given (overriding
/// the query's).
pub(crate) async fn page(
    state: &AppState,
    query: ListQuery,
    definition: Option<&str>,
) -> Result<Page<SagaView>> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<SagaStatus>)
        .transpose()
        .map_err(Error::InvalidQuery)?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(limit) => limit
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "limit={limit:?} is not a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let before = query.before.as_deref().map(decode_cursor).transpose()?;
    let stuck = match query.stuck.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::InvalidQuery(format!(
                "stuck={other:?} is not true or false"
            )));
        }
    };
    let filter = store::Filter {
        definition: definition.or(query.definition.as_deref()),
        status,
        // STUCK_AFTER_SECS, as the stuck-compensations gauge counts them.
        stuck_after_secs: stuck.then(|| state.engine.retry().stuck_after_secs as f64),
    };
    let (sagas, logs) = state
        .engine
        .bounded(async |conn| {
            let sagas = store::list(&mut *conn, &filter, before, limit).await?;
            let ids: Vec<String> = sagas.iter().map(|s| s.saga_id.clone()).collect();
            let logs = store::logs(&mut *conn, &ids).await?;
            Ok((sagas, logs))
        })
        .await?;
    let next = (i64::try_from(sagas.len()).unwrap_or(i64::MAX) == limit)
        .then(|| {
            sagas
                .last()
                .map(|s| encode_cursor(s.created_at, &s.saga_id))
        })
        .flatten();
    let mut views = Vec::with_capacity(sagas.len());
    for saga in sagas {
        let own: Vec<_> = logs
            .iter()
            .filter(|l| l.saga_id == saga.saga_id)
            .cloned()
            .collect();
        views.push(view(state, saga, &own).await?);
    }
    Ok(Page { sagas: views, next })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CountsQuery {
    /// Only sagas of this definition.
    pub(crate) definition: Option<String>,
}

/// How many sagas are in each status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct Counts {
    pub running: i64,
    pub compensating: i64,
    /// Compensating sagas whose current compensation has failed for longer
    /// than STUCK_AFTER_SECS (as `GET /sagas?stuck=true` lists them).
    pub stuck: i64,
    /// Counted up to `counted_up_to`: that many means at least that many.
    pub succeeded: i64,
    /// Counted up to `counted_up_to`: that many means at least that many.
    pub failed: i64,
    /// The ended sagas are counted up to this many, so that counting costs
    /// the same whatever the table holds.
    pub counted_up_to: i64,
    /// The newest saga's id, if any: it changes each time a saga starts.
    pub newest: Option<String>,
}

/// How many sagas are in each status: the unfinished ones exactly, the
/// ended ones up to `counted_up_to`.
#[utoipa::path(get, path = "/sagas/counts", tag = "sagas",
    params(CountsQuery),
    responses(
        (status = 200, description = "The counts", body = Counts),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn counts(
    State(state): State<AppState>,
    Query(query): Query<CountsQuery>,
) -> Result<Json<Counts>> {
    counts_of(&state, query.definition.as_deref())
        .await
        .map(Json)
}

/// The counts of the sagas of `definition`, or of all.
pub(crate) async fn counts_of(state: &AppState, definition: Option<&str>) -> Result<Counts> {
    let stuck_after_secs = state.engine.retry().stuck_after_secs as f64;
    let store::Counts {
        running,
        compensating,
        stuck,
        succeeded,
        failed,
        newest,
    } = state
        .engine
        .bounded(async |conn| {
            store::counts(conn, definition, stuck_after_secs, COUNTED_UP_TO).await
        })
        .await?;
    Ok(Counts {
        running,
        compensating,
        stuck,
        succeeded,
        failed,
        counted_up_to: COUNTED_UP_TO,
        newest,
    })
}

/// A page cursor: `<created_at in microseconds>.<saga id>`.
fn encode_cursor(created_at: DateTime<Utc>, id: &str) -> String {
    format!("{}.{id}", created_at.timestamp_micros())
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String)> {
    cursor
        .split_once('.')
        .and_then(|(micros, id)| {
            let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
            Some((at, id.to_owned()))
        })
        .ok_or_else(|| {
            Error::InvalidQuery(format!(
                "before={cursor:?} is not a cursor; pass the `next` value of the previous page"
            ))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let cursor = encode_cursor(at, "trip.1:a");
        assert_eq!(decode_cursor(&cursor).unwrap(), (at, "trip.1:a".to_owned()));
        assert!(decode_cursor("nonsense").is_err());
    }

    #[test]
    fn differing_fields_are_named() {
        let a = json!({"x": 1, "y": 2, "z": 3});
        let b = json!({"x": 1, "y": 5, "w": 0});
        assert_eq!(differing_fields(&a, &b), ["w", "y", "z"]);
        assert!(differing_fields(&a, &a).is_empty());
    }
}
