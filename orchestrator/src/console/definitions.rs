//! `/ui/definitions`: the registered definitions and a form to try one
//! (validate, register) through the public API; and
//! `/ui/definitions/{name}/{version}`: one version's document and graph.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use super::graph::{Graph, NODE_HEIGHT, NODE_WIDTH};
use super::{ErrorPage, PageResult, failed, render};
use crate::AppState;
use crate::store;

/// A registered version, as the list shows it.
pub struct Listed {
    pub name: String,
    pub version: i32,
    pub digest: String,
    pub registered: DateTime<Utc>,
}

#[derive(Template)]
#[template(path = "definitions.html")]
struct DefinitionsPage {
    definitions: Vec<Listed>,
}

pub(super) async fn list(State(state): State<AppState>) -> PageResult {
    let rows = state
        .engine
        .bounded(async |conn| store::definitions::list(conn, None).await)
        .await
        .map_err(|err| failed(err.into()))?;
    let definitions = rows
        .into_iter()
        .map(|(name, version, digest, registered)| Listed {
            name,
            version,
            digest,
            registered,
        })
        .collect();
    render(&DefinitionsPage { definitions })
}

#[derive(Template)]
#[template(path = "definition.html")]
struct DefinitionPage {
    name: String,
    version: i32,
    digest: String,
    document: String,
    graph: Graph,
    node_width: u32,
    node_height: u32,
}

pub(super) async fn show(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> PageResult {
    let missing = || {
        ErrorPage::new(
            StatusCode::NOT_FOUND,
            format!("no definition {name} version {version}"),
        )
    };
    let number: i32 = version.parse().map_err(|_| missing())?;
    let definition = state
        .engine
        .definition(&name, Some(number))
        .await
        .map_err(|err| failed(err.into()))?
        .ok_or_else(missing)?;
    let document = serde_json::to_string_pretty(&definition.document).unwrap_or_default();
    render(&DefinitionPage {
        graph: Graph::new(&definition, &[]),
        name: definition.name.to_string(),
        version: definition.version,
        digest: definition.digest.clone(),
        document,
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
    })
}
