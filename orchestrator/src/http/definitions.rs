//! Saga definitions: list and read them (`GET /definitions[/{name}[/{version}]]`),
//! register one (`PUT /definitions/{name}`, YAML or JSON), check one without
//! registering it (`POST /definitions/validate`), read the document's JSON
//! Schema (`GET /definitions/schema`), and try one without
//! calling anything (`POST /definitions/{name}/dry-run`).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use common::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sagas::checked;
use super::{Error, Result};
use crate::AppState;
use crate::definition::dry_run::{self, DryRun, Outcome};
use crate::definition::validate::{self, Diagnostic};
use crate::definition::{Document, Format};
use crate::store;
use crate::store::definitions::Registered;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/definitions", get(list))
        .route("/definitions/validate", post(check))
        .route("/definitions/schema", get(schema))
        .route("/definitions/{name}", get(versions).put(register))
        .route("/definitions/{name}/dry-run", post(dry_run))
        .route("/definitions/{name}/{version}", get(document))
}

/// A request body read as a document, in the syntax its `Content-Type`
/// names (YAML unless it names JSON).
fn parse(headers: &HeaderMap, body: &Bytes) -> std::result::Result<Document, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_owned())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Document::parse(text, Format::from_content_type(content_type)).map_err(|err| err.message)
}

/// The JSON Schema of a definition document, for editors and linters.
async fn schema() -> Json<Value> {
    Json(crate::definition::document::json_schema())
}

#[derive(Debug, Serialize)]
struct Summary {
    name: String,
    latest: i32,
    versions: Vec<i32>,
}

#[tracing::instrument(skip_all)]
async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let rows = state
        .engine
        .bounded(async |conn| store::definitions::list(conn, None).await)
        .await?;
    let mut summaries: Vec<Summary> = Vec::new();
    for (name, version, _, _) in rows {
        match summaries.last_mut() {
            Some(last) if last.name == name => {
                last.versions.push(version);
                last.latest = version;
            }
            _ => summaries.push(Summary {
                name,
                latest: version,
                versions: vec![version],
            }),
        }
    }
    Ok(Json(serde_json::json!({ "definitions": summaries })))
}

#[derive(Debug, Serialize)]
struct Version {
    version: i32,
    digest: String,
    created_at: DateTime<Utc>,
}

#[tracing::instrument(skip_all, fields(?name))]
async fn versions(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    let rows = state
        .engine
        .bounded(async |conn| store::definitions::list(conn, Some(&name)).await)
        .await?;
    if rows.is_empty() {
        return Err(Error::Missing(format!(
            "no definition {name}; register one with PUT /definitions/{name}"
        )));
    }
    let versions: Vec<Version> = rows
        .into_iter()
        .map(|(_, version, digest, created_at)| Version {
            version,
            digest,
            created_at,
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "name": name, "versions": versions }),
    ))
}

#[tracing::instrument(skip_all, fields(?name, ?version))]
async fn document(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response> {
    let version = version
        .parse::<i32>()
        .map_err(|_| Error::InvalidQuery(format!("version {version:?} is not a whole number")))?;
    let record = state
        .engine
        .bounded(async |conn| store::definitions::find(conn, &name, Some(version)).await)
        .await?
        .ok_or_else(|| {
            Error::Missing(format!(
                "definition {name} has no version {version}; GET /definitions/{name} lists its versions"
            ))
        })?;
    let mut response = Json(record.document).into_response();
    if let Ok(etag) = format!("\"{}\"", record.digest).parse() {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

#[derive(Debug, Serialize)]
struct RegisteredBody {
    name: String,
    version: i32,
    digest: String,
    /// False when the same content was registered before.
    created: bool,
    /// Warnings; a definition with errors is refused.
    diagnostics: Vec<Diagnostic>,
}

#[tracing::instrument(skip_all, fields(?name))]
async fn register(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let doc = parse(&headers, &body).map_err(Error::MalformedDefinition)?;
    if doc.name != name {
        return Err(Error::MalformedDefinition(format!(
            "the document is named {:?}, not {name:?}: PUT it to /definitions/{}",
            doc.name, doc.name
        )));
    }
    let (definition, registered, diagnostics) = state.engine.register(doc).await?;
    let created = registered == Registered::Created;
    if created {
        tracing::info!(%name, version = definition.version, digest = %definition.digest, "definition registered");
    }
    let body = RegisteredBody {
        name,
        version: definition.version,
        digest: definition.digest.clone(),
        created,
        diagnostics,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Serialize)]
struct Validation {
    valid: bool,
    diagnostics: Vec<Diagnostic>,
}

#[tracing::instrument(skip_all)]
async fn check(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Json<Validation> {
    let diagnostics = match parse(&headers, &body) {
        Ok(doc) => validate::compile(doc, &state.engine.checks()).diagnostics,
        Err(message) => vec![Diagnostic::error("parse", "", message)],
    };
    let valid = !diagnostics
        .iter()
        .any(|d| d.severity == validate::Severity::Error);
    Json(Validation { valid, diagnostics })
}

#[derive(Debug, Deserialize)]
struct DryRunQuery {
    version: Option<String>,
}

/// `POST /definitions/{name}/dry-run`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRunBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    /// Mocked answers by step name; every other step succeeds.
    #[serde(default)]
    outcomes: BTreeMap<String, Outcome>,
}

#[tracing::instrument(skip_all, fields(?name))]
async fn dry_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DryRunQuery>,
    Json(body): Json<DryRunBody>,
) -> Result<Json<DryRun>> {
    let version = query
        .version
        .as_deref()
        .map(|v| {
            v.parse::<i32>()
                .map_err(|_| Error::InvalidQuery(format!("version={v:?} is not a whole number")))
        })
        .transpose()?;
    let definition = state.definition(&name, version).await?;
    for step in body.outcomes.keys() {
        let known = definition.steps.iter().any(|s| {
            &*s.forward.step == step || s.compensation.as_ref().is_some_and(|c| &*c.step == step)
        });
        if !known {
            return Err(Error::InvalidInput(format!(
                "outcomes names step {step}, which definition {name} does not have"
            )));
        }
    }
    let id = body.id.unwrap_or_else(|| "dry-run".to_owned());
    let (id, input) = checked(&definition, id, body.input)?;
    let participants = state.engine.participants();
    let run = dry_run::run(
        &definition,
        &id,
        &input,
        &body.outcomes,
        |p| {
            participants
                .base_url(p)
                .unwrap_or_else(|| format!("http://{p}"))
        },
        state.engine.retry().step_max_attempts,
    );
    Ok(Json(run))
}
