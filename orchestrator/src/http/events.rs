//! Changes as they happen, as server-sent events:
//!
//! - `GET /sagas/{definition}/{id}/events`: the saga, as
//!   `GET /sagas/{definition}/{id}` answers it, at once and each time it
//!   moves; the stream closes once the saga has ended (a client that
//!   reconnects gets the ended saga and the close at once).
//! - `GET /sagas/counts/events`: the counts, as `GET /sagas/counts` answers
//!   them, at once and each time they change.
//!
//! Both look for a change by reading the database at an interval: no
//! trigger, no `LISTEN`, nothing on the path that drives sagas.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use common::extract::{Path, Query};
use futures::Stream;
use serde::Serialize;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sagas::{Counts, CountsQuery, counts_of, load, load_of};
use super::{ErrorBody, Result};
use crate::AppState;
use crate::saga::view::SagaView;
use crate::store;

/// How often a saga's stream looks for a change: one read by key each time.
const SAGA_EVERY: Duration = Duration::from_millis(250);

/// How often the counts' stream counts again.
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// The longest a stream stays open; a browser's `EventSource` opens
/// another, and gets the value as it stands.
const LONGEST: Duration = Duration::from_secs(600);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(saga_events))
        .routes(routes!(counts_events))
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
async fn saga_events(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = load_of(&state, &definition, &id).await?;
    let next = move |state: AppState, sent: &SagaView| {
        let (id, seen) = (id.clone(), (sent.status, sent.updated_at));
        async move {
            // The row alone tells whether the saga moved; the saga and its
            // log are read only then.
            let row = state
                .engine
                .bounded(async |conn| store::find(conn, &id).await)
                .await;
            match row {
                Ok(Some(r)) if (r.status, r.updated_at) != seen => load(&state, &id).await.ok(),
                _ => None,
            }
        }
    };
    Ok(polled(state, "saga", first, SAGA_EVERY, next, |saga| {
        saga.status.is_terminal()
    }))
}

/// The counts of `GET /sagas/counts`, as server-sent events.
#[utoipa::path(get, path = "/sagas/counts/events", tag = "sagas",
    params(CountsQuery),
    responses(
        (status = 200, description = "`event: counts` with the counts as JSON (as `GET /sagas/counts` answers them), at once and each time they change", content_type = "text/event-stream", body = String),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn counts_events(
    State(state): State<AppState>,
    Query(query): Query<CountsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = counts_of(&state, query.definition.as_deref()).await?;
    let next = move |state: AppState, sent: &Counts| {
        let (definition, sent) = (query.definition.clone(), sent.clone());
        async move {
            let counts = counts_of(&state, definition.as_deref()).await.ok()?;
            (counts != sent).then_some(counts)
        }
    };
    Ok(polled(state, "counts", first, COUNTS_EVERY, next, |_| {
        false
    }))
}

/// Server-sent events named `name`: `first` at once, then each value
/// `next` finds. `next` is asked every `every` with the value sent last,
/// and answers `None` when nothing changed (or the read failed: it is
/// tried again at the next turn). The stream ends after a value that
/// `last` says is the last, when the process stops, or after [`LONGEST`].
fn polled<T, F, Fut>(
    state: AppState,
    name: &'static str,
    first: T,
    every: Duration,
    next: F,
    last: fn(&T) -> bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    T: Serialize + Send + 'static,
    F: Fn(AppState, &T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let stopping = state.engine.shutdown_token();
    let until = Instant::now() + LONGEST;
    let next = std::sync::Arc::new(next);
    // The value to send next (the first at once), and the one sent last.
    let stream = futures::stream::unfold((Some(first), None::<T>), move |(mut to_send, sent)| {
        let (state, stopping, next) = (state.clone(), stopping.clone(), next.clone());
        async move {
            if sent.as_ref().is_some_and(last) {
                return None;
            }
            while to_send.is_none() {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stopping.cancelled() => return None,
                }
                if Instant::now() >= until {
                    return None;
                }
                let sent = sent.as_ref()?;
                to_send = next(state.clone(), sent).await;
            }
            let value = to_send?;
            let event = Event::default()
                .event(name)
                .json_data(&value)
                .unwrap_or_else(|_| Event::default().event(name));
            Some((Ok(event), (None, Some(value))))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
