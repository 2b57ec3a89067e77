//! Saga definitions: list and read them (`GET /definitions[/{name}[/{version}]]`),
//! register one (`PUT /definitions/{name}`, YAML or JSON), check one without
//! registering it (`POST /definitions/validate`), read the document's JSON
//! Schema (`GET /definitions/schema`), and try one without calling
//! anything (`POST /definitions/{name}/dry-run` for a registered one,
//! `POST /definitions/dry-run` for a document not registered).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use common::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sagas::checked;
use super::{DiagnosticsBody, Error, ErrorBody, Result};
use crate::AppState;
use crate::definition::dry_run::{self, DryRun, Outcome};
use crate::definition::validate::{self, Diagnostic};
use crate::definition::{Document, Format};
use crate::store;
use crate::store::definitions::Registered;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(check))
        .routes(routes!(schema))
        .routes(routes!(versions, register))
        .routes(routes!(dry_run))
        .routes(routes!(dry_run_document))
        .routes(routes!(document))
}

/// A request body read as a document, in the syntax its `Content-Type`
/// names (YAML unless it names JSON).
fn parse(headers: &HeaderMap, body: &Bytes) -> std::result::Result<Document, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_owned())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let doc = Document::parse(text, Format::from_content_type(content_type))
        .map_err(|err| err.message)?;
    refuse_controls(&doc)?;
    Ok(doc)
}

/// A document whose text holds a control character (PostgreSQL stores no
/// NUL) is refused, its field named.
fn refuse_controls(doc: &Document) -> std::result::Result<(), String> {
    match common::text::refused_in(&doc.to_json()) {
        Some((path, c)) => Err(format!(
            "the document's {path} holds the control character {}; remove it",
            common::text::describe(c)
        )),
        None => Ok(()),
    }
}

/// The JSON Schema of a definition document, for editors and linters.
#[utoipa::path(get, path = "/definitions/schema", tag = "definitions",
    responses((status = 200, description = "A JSON Schema (draft 2020-12)", body = Object)))]
async fn schema() -> Json<Value> {
    Json(crate::definition::document::json_schema())
}

/// The definitions registered.
#[derive(Debug, Serialize, ToSchema)]
struct Definitions {
    definitions: Vec<Summary>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Summary {
    name: String,
    latest: i32,
    versions: Vec<i32>,
}

/// Every definition, with its versions.
#[utoipa::path(get, path = "/definitions", tag = "definitions",
    responses(
        (status = 200, description = "The definitions", body = Definitions),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn list(State(state): State<AppState>) -> Result<Json<Definitions>> {
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
    Ok(Json(Definitions {
        definitions: summaries,
    }))
}

/// A definition's versions.
#[derive(Debug, Serialize, ToSchema)]
struct Versions {
    name: String,
    versions: Vec<Version>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Version {
    version: i32,
    /// The SHA-256 of the document's canonical JSON.
    digest: String,
    created_at: DateTime<Utc>,
}

/// The versions of one definition.
#[utoipa::path(get, path = "/definitions/{name}", tag = "definitions",
    params(("name" = String, Path, description = "The definition's name")),
    responses(
        (status = 200, description = "Its versions, oldest first", body = Versions),
        (status = 404, description = "No definition of that name", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(?name))]
async fn versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Versions>> {
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
    Ok(Json(Versions { name, versions }))
}

/// One version's document, as registered (`ETag`: its digest).
#[utoipa::path(get, path = "/definitions/{name}/{version}", tag = "definitions",
    params(
        ("name" = String, Path, description = "The definition's name"),
        ("version" = i32, Path, description = "The version"),
    ),
    responses(
        (status = 200, description = "The document, in JSON (its schema: GET /definitions/schema)", body = Object),
        (status = 400, description = "The version is not a whole number", body = ErrorBody),
        (status = 404, description = "No such definition or version", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
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

#[derive(Debug, Serialize, ToSchema)]
struct RegisteredBody {
    name: String,
    version: i32,
    digest: String,
    /// False when the same content was registered before.
    created: bool,
    /// Warnings; a definition with errors is refused.
    diagnostics: Vec<Diagnostic>,
}

/// Registers a version of the definition (YAML or JSON, by Content-Type).
#[utoipa::path(put, path = "/definitions/{name}", tag = "definitions",
    params(("name" = String, Path, description = "The definition's name, as the document names it")),
    request_body(description = "The document (its schema: GET /definitions/schema)",
        content((String = "application/yaml"), (Object = "application/json"))),
    responses(
        (status = 200, description = "The same content was registered before", body = RegisteredBody),
        (status = 201, description = "Registered", body = RegisteredBody),
        (status = 400, description = "The body is not a document, or it names another definition", body = ErrorBody),
        (status = 409, description = "The version is registered with other content", body = ErrorBody),
        (status = 422, description = "The document has errors", body = DiagnosticsBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
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

#[derive(Debug, Serialize, ToSchema)]
struct Validation {
    valid: bool,
    diagnostics: Vec<Diagnostic>,
    /// A valid document's steps, in order (empty when it is not valid):
    /// the names a dry run's `outcomes` take.
    steps: Vec<StepNames>,
}

/// A forward step's name, and its compensation's.
#[derive(Debug, Serialize, ToSchema)]
struct StepNames {
    name: String,
    compensation: Option<String>,
}

/// Checks a document without registering it.
#[utoipa::path(post, path = "/definitions/validate", tag = "definitions",
    request_body(description = "The document (YAML or JSON, by Content-Type)",
        content((String = "application/yaml"), (Object = "application/json"))),
    responses(
        (status = 200, description = "Whether it is valid, and every finding", body = Validation),
        (status = 400, description = "The body is empty", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn check(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Validation>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::MalformedDefinition(
            "the body is empty; send the definition document (YAML or JSON) to check".into(),
        ));
    }
    let compiled = match parse(&headers, &body) {
        Ok(doc) => validate::compile(doc, &state.engine.checks()),
        Err(message) => validate::Compiled {
            definition: None,
            diagnostics: vec![Diagnostic::error("parse", "", message)],
        },
    };
    let steps = compiled.definition.iter().flat_map(|d| &d.steps);
    let steps = steps
        .map(|s| StepNames {
            name: s.forward.step.to_string(),
            compensation: s.compensation.as_ref().map(|c| c.step.to_string()),
        })
        .collect();
    Ok(Json(Validation {
        valid: compiled.is_valid(),
        diagnostics: compiled.diagnostics,
        steps,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DryRunQuery {
    /// The version to run (default: the newest).
    #[param(value_type = Option<i32>)]
    version: Option<String>,
}

/// `POST /definitions/{name}/dry-run`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DryRunBody {
    /// The saga id the templates see (default `dry-run`).
    #[serde(default)]
    id: Option<String>,
    /// The input, checked as a start's is.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    /// Mocked answers by step name; every other step succeeds.
    #[serde(default)]
    outcomes: BTreeMap<String, Outcome>,
}

/// The calls a saga of the definition would make, with mocked answers.
#[utoipa::path(post, path = "/definitions/{name}/dry-run", tag = "definitions",
    params(("name" = String, Path, description = "The definition's name"), DryRunQuery),
    request_body = DryRunBody,
    responses(
        (status = 200, description = "The calls in order, and how the saga would end", body = DryRun),
        (status = 400, description = "The input, the outcomes or a query parameter is not acceptable, or the body is not JSON", body = ErrorBody),
        (status = 404, description = "No such definition or version", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
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
    dry_run_of(&state, &definition, body).map(Json)
}

/// `POST /definitions/dry-run`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DryRunDocumentBody {
    /// The document: its text (YAML or JSON) or a JSON object.
    #[schema(value_type = Object)]
    document: Value,
    /// As [`DryRunBody`]'s (spelled out, not flattened: a flattened body
    /// would be described as two closed objects no value fits).
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    #[serde(default)]
    outcomes: BTreeMap<String, Outcome>,
}

/// The calls a saga of a document not registered would make, with mocked
/// answers: a definition tried before it is registered.
#[utoipa::path(post, path = "/definitions/dry-run", tag = "definitions",
    request_body = DryRunDocumentBody,
    responses(
        (status = 200, description = "The calls in order, and how the saga would end", body = DryRun),
        (status = 400, description = "The document is not a definition, the input or the outcomes are not acceptable, or the body is not JSON", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The document has errors, or the body does not fit the schema", body = DiagnosticsBody),
    ))]
#[tracing::instrument(skip_all)]
async fn dry_run_document(
    State(state): State<AppState>,
    Json(body): Json<DryRunDocumentBody>,
) -> Result<Json<DryRun>> {
    let doc = match body.document {
        Value::String(text) => Document::parse(&text, Format::Yaml).map_err(|err| err.message),
        object => {
            serde_json::from_value(object).map_err(|err| format!("not a saga definition: {err}"))
        }
    }
    .and_then(|doc| refuse_controls(&doc).map(|()| doc))
    .map_err(Error::MalformedDefinition)?;
    let compiled = validate::compile(doc, &state.engine.checks());
    let definition = compiled
        .definition
        .ok_or(Error::InvalidDefinition(compiled.diagnostics))?;
    let run = DryRunBody {
        id: body.id,
        input: body.input,
        outcomes: body.outcomes,
    };
    dry_run_of(&state, &definition, run).map(Json)
}

/// Runs `definition` as `body` asks, calling nothing.
fn dry_run_of(
    state: &AppState,
    definition: &crate::definition::Definition,
    body: DryRunBody,
) -> Result<DryRun> {
    let name = &definition.name;
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
    let (id, input) = checked(definition, id, body.input)?;
    let participants = state.engine.participants();
    Ok(dry_run::run(
        definition,
        &id,
        &input,
        &body.outcomes,
        |p| {
            participants
                .base_url(p)
                .unwrap_or_else(|| format!("http://{p}"))
        },
        state.engine.retry().step_max_attempts,
    ))
}
