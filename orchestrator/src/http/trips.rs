//! Trips: start a saga (`GET /trip`, the sample's entry point, and
//! `POST /trips`), read one (`GET /trips/{trip_id}`), list them (`GET /trips`).
//!
//! Starting is idempotent by trip id: the same trip again joins the existing
//! saga and starts nothing; the same trip id with other input is a 409.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use common::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::AppState;
use crate::saga::view::SagaView;
use crate::saga::{SagaStatus, Trip, TripInput};
use crate::store;

/// The longest `?wait=` accepted, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/trip", get(trip_get))
        .route("/trips", get(list).post(trip_post))
        .route("/trips/{trip_id}", get(show))
}

/// `GET /trip` parameters, named as in the sample.
#[derive(Debug, Deserialize)]
struct TripQuery {
    #[serde(rename = "runType")]
    run_type: Option<String>,
    #[serde(rename = "tripID")]
    trip_id: Option<String>,
    wait: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

#[tracing::instrument(skip_all, fields(trip_id = query.trip_id, run_type = query.run_type))]
async fn trip_get(
    State(state): State<AppState>,
    Query(query): Query<TripQuery>,
) -> Result<Response> {
    let wait = state.wait(query.wait.as_deref())?;
    let input = TripInput {
        trip_id: query.trip_id,
        run_type: query.run_type,
        ..TripInput::default()
    };
    start_or_join(&state, input, wait).await
}

#[tracing::instrument(skip_all, fields(trip_id = input.trip_id))]
async fn trip_post(
    State(state): State<AppState>,
    Query(query): Query<WaitQuery>,
    Json(input): Json<TripInput>,
) -> Result<Response> {
    let wait = state.wait(query.wait.as_deref())?;
    start_or_join(&state, input, wait).await
}

impl AppState {
    /// `?wait=` in seconds, or the configured default.
    fn wait(&self, wait: Option<&str>) -> Result<Duration> {
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
}

async fn start_or_join(state: &AppState, mut input: TripInput, wait: Duration) -> Result<Response> {
    input.deadline_secs = input.deadline_secs.or(state.default_deadline_secs);
    let trip = input.into_trip().map_err(Error::InvalidTrip)?;
    let trip_id = trip.trip_id.clone();
    if !state.engine.start(trip.clone()).await? {
        // The trip has a saga already: join it if the input is the same.
        let existing = state
            .engine
            .bounded(async |conn| store::find(conn, &trip_id).await)
            .await?
            .ok_or_else(|| Error::NotFound(trip_id.clone()))?;
        let stored: Trip = serde_json::from_value(existing.input)
            .map_err(|err| Error::Corrupt(format!("trip {trip_id}: {err}")))?;
        let fields = stored.differing_fields(&trip);
        if !fields.is_empty() {
            return Err(Error::Conflict { trip_id, fields });
        }
    }
    if let Some(ended) = state.engine.wait_for_end(&trip_id, wait).await? {
        return Ok(Json(&*ended).into_response());
    }
    let saga = load(state, &trip_id).await?;
    if saga.status.is_terminal() {
        return Ok(Json(saga).into_response());
    }
    let mut response = (StatusCode::ACCEPTED, Json(saga)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/trips/{trip_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn load(state: &AppState, trip_id: &str) -> Result<SagaView> {
    let read = state.engine.bounded(async |conn| {
        let Some(saga) = store::find(&mut *conn, trip_id).await? else {
            return Ok(None);
        };
        let logs = store::logs(&mut *conn, &[trip_id.to_owned()]).await?;
        Ok(Some(SagaView::new(saga, &logs)))
    });
    read.await?
        .ok_or_else(|| Error::NotFound(trip_id.to_owned()))
}

#[tracing::instrument(skip_all, fields(%trip_id))]
async fn show(
    State(state): State<AppState>,
    Path(trip_id): Path<String>,
) -> Result<Json<SagaView>> {
    common::wire::validate_trip_id(&trip_id).map_err(Error::InvalidTrip)?;
    load(&state, &trip_id).await.map(Json)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

#[derive(Debug, Serialize)]
struct SagaPage {
    sagas: Vec<SagaView>,
    /// Pass as `before` for the next page; `null` on the last page.
    next: Option<String>,
}

#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<SagaPage>> {
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
    let (sagas, logs) = state
        .engine
        .bounded(async |conn| {
            let sagas = store::list(&mut *conn, status, before, limit).await?;
            let trip_ids: Vec<String> = sagas.iter().map(|s| s.trip_id.clone()).collect();
            let logs = store::logs(&mut *conn, &trip_ids).await?;
            Ok((sagas, logs))
        })
        .await?;
    let next = (i64::try_from(sagas.len()).unwrap_or(i64::MAX) == limit)
        .then(|| {
            sagas
                .last()
                .map(|s| encode_cursor(s.created_at, &s.trip_id))
        })
        .flatten();
    let sagas = sagas
        .into_iter()
        .map(|saga| {
            let own: Vec<_> = logs
                .iter()
                .filter(|l| l.trip_id == saga.trip_id)
                .cloned()
                .collect();
            SagaView::new(saga, &own)
        })
        .collect();
    Ok(Json(SagaPage { sagas, next }))
}

/// A page cursor: `<created_at in microseconds>.<trip_id>`.
fn encode_cursor(created_at: DateTime<Utc>, trip_id: &str) -> String {
    format!("{}.{trip_id}", created_at.timestamp_micros())
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String)> {
    cursor
        .split_once('.')
        .and_then(|(micros, trip_id)| {
            let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
            Some((at, trip_id.to_owned()))
        })
        .ok_or_else(|| {
            Error::InvalidQuery(format!(
                "before={cursor:?} is not a cursor; pass the `next` value of the previous page"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let cursor = encode_cursor(at, "trip.1:a");
        assert_eq!(decode_cursor(&cursor).unwrap(), (at, "trip.1:a".to_owned()));
        assert!(decode_cursor("nonsense").is_err());
    }
}
