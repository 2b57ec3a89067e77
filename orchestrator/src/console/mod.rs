//! The console: pages a person reads in a browser, under `/ui`, drawn on
//! the server from templates compiled into the binary (no build step, no
//! asset fetched from elsewhere). They read what the public API reads,
//! through the same functions, so whatever a page shows a script can get
//! from the API.
//!
//! - `/ui`: the sagas, newest first, filtered as `GET /sagas` filters them.
//! - `/ui/sagas/{definition}/{id}`: one saga: its graph ([`graph`]), its
//!   steps, its log rows and its webhook deliveries, followed live.
//! - `/ui/start`: a form that starts a saga ([`start`]).
//! - `/ui/definitions`, `/ui/definitions/{name}/{version}`: the definitions,
//!   each version's document and graph, and a form to validate or register
//!   one ([`definitions`]).

pub mod definitions;
pub mod graph;
pub mod start;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::http::sagas::{Counts, ListQuery, counts_of, page};
use crate::saga::view::SagaView;
use crate::store::{self, LogRecord, webhooks::Delivery};
use graph::{Graph, NODE_HEIGHT, NODE_WIDTH};

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(sagas))
        .route("/ui/sagas/{definition}/{id}", get(saga))
        .route("/ui/start", get(start::start))
        .route("/ui/definitions", get(definitions::list))
        .route("/ui/definitions/{name}/{version}", get(definitions::show))
}

/// A page, or the error page with its status.
pub(super) type PageResult = Result<Html<String>, ErrorPage>;

/// The list of sagas.
#[derive(Template)]
#[template(path = "sagas.html")]
struct SagasPage {
    sagas: Vec<SagaView>,
    counts: Vec<Count>,
    /// Where the counts come from as they change.
    counts_events: String,
    definition: String,
    status: String,
    stuck: bool,
    /// The link to the next (older) page.
    older: Option<String>,
}

/// One of the counts above the list, a link to the sagas it counts.
struct Count {
    status: &'static str,
    label: &'static str,
    shown: String,
    link: String,
}

impl Count {
    fn all(counts: &Counts, definition: Option<&str>) -> Vec<Self> {
        let ended = |n: i64| {
            if n >= counts.counted_up_to {
                format!("{n}+")
            } else {
                n.to_string()
            }
        };
        let link = |pair: (&str, &str)| {
            let mut link = url::form_urlencoded::Serializer::new(String::from("/ui?"));
            if let Some(d) = definition {
                link.append_pair("definition", d);
            }
            link.append_pair(pair.0, pair.1);
            link.finish()
        };
        let count = |status, label, shown, filter| Self {
            status,
            label,
            shown,
            link: link(filter),
        };
        vec![
            count(
                "running",
                "Running",
                counts.running.to_string(),
                ("status", "running"),
            ),
            count(
                "compensating",
                "Compensating",
                counts.compensating.to_string(),
                ("status", "compensating"),
            ),
            count(
                "stuck",
                "Stuck",
                counts.stuck.to_string(),
                ("stuck", "true"),
            ),
            count(
                "succeeded",
                "Succeeded",
                ended(counts.succeeded),
                ("status", "succeeded"),
            ),
            count(
                "failed",
                "Failed",
                ended(counts.failed),
                ("status", "failed"),
            ),
        ]
    }
}

async fn sagas(State(state): State<AppState>, Query(query): Query<ListQuery>) -> PageResult {
    // A form sends its empty fields as empty strings: they filter nothing.
    let given = |value: Option<String>| value.filter(|v| !v.is_empty());
    let query = ListQuery {
        definition: given(query.definition),
        status: given(query.status),
        limit: given(query.limit),
        before: given(query.before),
        stuck: given(query.stuck).map(|s| if s == "on" { "true".into() } else { s }),
    };
    let (definition, status) = (query.definition.clone(), query.status.clone());
    let stuck = query.stuck.as_deref() == Some("true");
    let found = page(&state, query, None).await.map_err(failed)?;
    let counts = counts_of(&state, definition.as_deref())
        .await
        .map_err(failed)?;
    let mut counts_events =
        url::form_urlencoded::Serializer::new(String::from("/sagas/counts/events?"));
    if let Some(d) = &definition {
        counts_events.append_pair("definition", d);
    }
    let older = found.next.map(|next| {
        let mut link = url::form_urlencoded::Serializer::new(String::from("/ui?"));
        if let Some(d) = &definition {
            link.append_pair("definition", d);
        }
        if let Some(s) = &status {
            link.append_pair("status", s);
        }
        if stuck {
            link.append_pair("stuck", "true");
        }
        link.append_pair("before", &next);
        link.finish()
    });
    render(&SagasPage {
        sagas: found.sagas,
        counts: Count::all(&counts, definition.as_deref()),
        counts_events: counts_events.finish().trim_end_matches('?').to_owned(),
        definition: definition.unwrap_or_default(),
        status: status.unwrap_or_default(),
        stuck,
        older,
    })
}

/// One saga.
#[derive(Template)]
#[template(path = "saga.html")]
struct SagaPage {
    saga: SagaView,
    graph: Graph,
    log: Vec<LogEntry>,
    deliveries: Vec<Delivery>,
    input: String,
    outputs: String,
    node_width: u32,
    node_height: u32,
}

async fn saga(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
) -> PageResult {
    if common::wire::validate_trip_id(&id).is_err() {
        return Err(ErrorPage::new(
            StatusCode::NOT_FOUND,
            format!("no saga {id:?}"),
        ));
    }
    let read = state.engine.bounded(async |conn| {
        let Some(saga) = store::find(&mut *conn, &id).await? else {
            return Ok(None);
        };
        let logs = store::logs(&mut *conn, std::slice::from_ref(&id)).await?;
        let deliveries = store::webhooks::deliveries(&mut *conn, &id).await?;
        Ok(Some((saga, logs, deliveries)))
    });
    let missing = || {
        ErrorPage::new(
            StatusCode::NOT_FOUND,
            format!("no saga {id} of definition {definition}"),
        )
    };
    let (record, logs, deliveries) = read
        .await
        .map_err(|err| failed(err.into()))?
        .ok_or_else(missing)?;
    if record.definition != definition {
        return Err(missing());
    }
    let compiled = state
        .engine
        .definition(&record.definition, Some(record.definition_version))
        .await
        .map_err(|err| failed(err.into()))?
        .ok_or_else(|| {
            ErrorPage::new(
                StatusCode::NOT_FOUND,
                format!(
                    "definition {definition} version {} is not registered",
                    record.definition_version
                ),
            )
        })?;
    let saga = SagaView::new(record, &logs, |step| compiled.is_forward(step));
    let pretty =
        |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
    render(&SagaPage {
        graph: Graph::new(&compiled, &logs),
        input: pretty(&saga.input),
        outputs: pretty(&saga.outputs),
        saga,
        log: LogEntry::fold(logs),
        deliveries,
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
    })
}

/// A row of the log as the saga's page shows it, or rows folded away.
enum LogEntry {
    Row(LogRecord),
    /// The middle of a long run of one step's rows (a step retried many
    /// times), hidden until asked for.
    Folded {
        id: String,
        step: String,
        rows: Vec<LogRecord>,
    },
}

/// A run of one step's rows longer than this is folded.
const FOLD_OVER: usize = 8;
/// The rows of a folded run shown before the fold, and after it.
const FOLD_KEEP: usize = 3;

impl LogEntry {
    /// The log with each run of more than [`FOLD_OVER`] consecutive rows of
    /// one step folded, but for its first and last [`FOLD_KEEP`] rows: a
    /// step retried hundreds of times takes a few lines until opened.
    fn fold(logs: Vec<LogRecord>) -> Vec<Self> {
        let mut entries = Vec::with_capacity(logs.len().min(64));
        let mut run: Vec<LogRecord> = Vec::new();
        let flush = |run: &mut Vec<LogRecord>, entries: &mut Vec<Self>| {
            if run.len() <= FOLD_OVER {
                entries.extend(run.drain(..).map(Self::Row));
                return;
            }
            let tail = run.split_off(run.len() - FOLD_KEEP);
            let middle = run.split_off(FOLD_KEEP);
            entries.extend(run.drain(..).map(Self::Row));
            entries.push(Self::Folded {
                id: format!("fold-{}", middle[0].seq),
                step: middle[0].step.clone(),
                rows: middle,
            });
            entries.extend(tail.into_iter().map(Self::Row));
        };
        for row in logs {
            if run.last().is_some_and(|last| last.step != row.step) {
                flush(&mut run, &mut entries);
            }
            run.push(row);
        }
        flush(&mut run, &mut entries);
        entries
    }
}

/// The error page: the status the API would answer, and its message.
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub(super) struct ErrorPage {
    status: u16,
    message: String,
}

impl ErrorPage {
    pub(super) fn new(status: StatusCode, message: String) -> Self {
        Self {
            status: status.as_u16(),
            message,
        }
    }
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => status.into_response(),
        }
    }
}

/// The page of an API error, with the status the API answers.
pub(super) fn failed(err: crate::http::Error) -> ErrorPage {
    let message = err.to_string();
    ErrorPage::new(err.into_response().status(), message)
}

pub(super) fn render(page: &impl Template) -> PageResult {
    page.render().map(Html).map_err(|err| {
        tracing::error!(%err, "a console page did not render");
        ErrorPage::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the page did not render; the orchestrator's log says why".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::saga::StepEvent;

    fn row(seq: i32, step: &str, status: StepEvent) -> LogRecord {
        LogRecord {
            saga_id: "s".into(),
            seq,
            step: step.into(),
            status,
            attempt: seq,
            detail: json!({}),
            at: Utc::now(),
        }
    }

    fn shape(entries: &[LogEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                LogEntry::Row(r) => r.seq.to_string(),
                LogEntry::Folded { id, step, rows } => format!("{id}:{step}:{}", rows.len()),
            })
            .collect()
    }

    #[test]
    fn a_long_run_of_one_step_is_folded_but_for_its_ends() {
        let mut logs = vec![row(1, "ReserveFlight", StepEvent::Started)];
        logs.extend((2..=301).map(|seq| row(seq, "ReserveCarRental", StepEvent::Retrying)));
        logs.push(row(302, "ReserveCarRental", StepEvent::Succeeded));
        let entries = LogEntry::fold(logs);
        assert_eq!(
            shape(&entries),
            [
                "1",
                "2",
                "3",
                "4",
                "fold-5:ReserveCarRental:295",
                "300",
                "301",
                "302"
            ]
        );
    }

    #[test]
    fn short_runs_are_shown_whole() {
        let logs: Vec<_> = (1..=8)
            .map(|seq| row(seq, "ReserveFlight", StepEvent::Retrying))
            .chain((9..=12).map(|seq| row(seq, "CancelFlightReservation", StepEvent::Retrying)))
            .collect();
        let entries = LogEntry::fold(logs);
        assert_eq!(
            shape(&entries),
            (1..=12).map(|n| n.to_string()).collect::<Vec<_>>()
        );
    }
}
