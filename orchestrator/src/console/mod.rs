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
use crate::http::sagas::{ListQuery, page};
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
    definition: String,
    status: String,
    stuck: bool,
    /// The link to the next (older) page.
    older: Option<String>,
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
    logs: Vec<LogRecord>,
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
        logs,
        deliveries,
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
    })
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
