//! A saga's changes as they happen: `GET /sagas/{definition}/{id}/events`,
//! server-sent events, each the saga as `GET /sagas/{definition}/{id}`
//! answers it. The stream starts with the saga as it stands, sends it
//! again each time it moves, and closes once the saga has ended (a client
//! that reconnects gets the ended saga and the close at once).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use common::extract::Path;
use futures::Stream;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sagas::{load, load_of};
use super::{ErrorBody, Result};
use crate::AppState;
use crate::saga::SagaStatus;
use crate::store;

/// How often a stream looks for a change: one read by key each time.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The longest a stream stays open; a browser's `EventSource` opens
/// another, and gets the saga as it stands.
const LONGEST: Duration = Duration::from_secs(600);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// The saga's changes, as server-sent events.
#[utoipa::path(get, path = "/sagas/{definition}/{id}/events", tag = "sagas",
    params(
        ("definition" = String, Path, description = "The definition's name"),
        ("id" = String, Path, description = "The saga's id"),
    ),
    responses(
        (status = 200, description = "`event: saga` with the saga as JSON (as `GET /sagas/{definition}/{id}` answers it), at once and after each change; the stream closes after the saga has ended", content_type = "text/event-stream", body = String),
        (status = 400, description = "The id is not acceptable", body = ErrorBody),
        (status = 404, description = "No saga of that id and definition", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn events(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = load_of(&state, &definition, &id).await?;
    let stopping = state.engine.shutdown_token();
    let until = Instant::now() + LONGEST;
    // The saga to send next (the first at once), and the last one sent.
    let start = (Some(first), None::<(SagaStatus, DateTime<Utc>)>);
    let stream = futures::stream::unfold(start, move |(next, sent)| {
        let (state, id, stopping) = (state.clone(), id.clone(), stopping.clone());
        async move {
            if sent.is_some_and(|(status, _)| status.is_terminal()) {
                return None;
            }
            let mut next = next;
            while next.is_none() {
                tokio::select! {
                    () = tokio::time::sleep(CHECK_EVERY) => {}
                    () = stopping.cancelled() => return None,
                }
                if Instant::now() >= until {
                    return None;
                }
                // The row alone tells whether the saga moved; the saga and
                // its log are read only then. A read that fails (the
                // database away) is tried again at the next check.
                let row = state
                    .engine
                    .bounded(async |conn| store::find(conn, &id).await)
                    .await;
                let moved = matches!(&row, Ok(Some(r)) if Some((r.status, r.updated_at)) != sent);
                if moved {
                    next = load(&state, &id).await.ok();
                }
            }
            let saga = next?;
            let seen = (saga.status, saga.updated_at);
            let event = Event::default()
                .event("saga")
                .json_data(&saga)
                .unwrap_or_else(|_| Event::default().event("saga"));
            Some((Ok(event), (None, Some(seen))))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
