//! `GET /openapi.json`: every service describes its API in OpenAPI 3.1,
//! generated from the handlers and the types they answer (utoipa). This
//! module holds what every service shares: the probes, `/metrics`, the
//! document's own route and the error body.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa::openapi::{self, InfoBuilder};

use crate::error::ErrorBody;

/// The routes every service has, described.
#[derive(OpenApi)]
#[openapi(
    paths(crate::health::healthz, crate::health::readyz, metrics, openapi_json),
    components(schemas(ErrorBody, crate::health::Probe))
)]
struct Shared;

/// `GET /metrics`, as `crate::metrics::Metrics::instrument` serves it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Every series of this process, in the Prometheus text format (0.0.4)", content_type = "text/plain", body = String))
)]
#[allow(dead_code)]
fn metrics() {}

/// `GET /openapi.json`, as [`router`] serves it.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
#[allow(dead_code)]
fn openapi_json() {}

/// The service's document: its own paths and the shared ones, under its
/// name and this build's version.
pub fn finish(service: &str, description: &str, mut api: openapi::OpenApi) -> openapi::OpenApi {
    api.merge(Shared::openapi());
    add_answers(&mut api, |_| true, MIDDLEWARE_ANSWERS);
    api.info = InfoBuilder::new()
        .title(service)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .build();
    api
}

/// Adds `answers` (status, description; an [`ErrorBody`] each) to every
/// operation of `api` on a path `keep` takes, where the operation does not
/// describe that status itself.
pub fn add_answers(
    api: &mut openapi::OpenApi,
    keep: impl Fn(&str) -> bool,
    answers: &[(&str, &str)],
) {
    for (path, item) in api.paths.paths.iter_mut() {
        if !keep(path) {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            add_to(operation, answers);
        }
    }
}

/// The answers the middleware may give to any request (`crate::server`).
const MIDDLEWARE_ANSWERS: &[(&str, &str)] = &[
    (
        "400",
        "The URL holds a control character (control_character)",
    ),
    (
        "408",
        "The request took longer than this service allows (request_timeout)",
    ),
];

fn add_to(operation: &mut openapi::path::Operation, answers: &[(&str, &str)]) {
    for &(status, description) in answers {
        if operation.responses.responses.contains_key(status) {
            continue;
        }
        let response = openapi::ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                openapi::ContentBuilder::new()
                    .schema(Some(openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .insert(status.to_owned(), response.into());
    }
}

/// `GET /openapi.json` serving `api`, rendered once.
pub fn router<S>(api: &openapi::OpenApi) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    // Serializing a tree of strings and maps cannot fail.
    let body = api.to_json().unwrap_or_default();
    Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
        }),
    )
}

/// One operation on `path` (its `{name}` segments become string path
/// parameters): `request`, when given, names the JSON body's schema (and
/// the operation takes an `Idempotency-Key`); a
/// 2xx of `responses` answers the schema `answer`, any other status an
/// [`ErrorBody`]. For handlers `#[utoipa::path]` cannot describe (generic
/// ones).
pub fn operation(
    path: &str,
    id: &str,
    tag: &str,
    summary: &str,
    request: Option<&str>,
    answer: &str,
    responses: &[(u16, &str)],
) -> openapi::path::Operation {
    use openapi::path::{OperationBuilder, ParameterBuilder, ParameterIn};
    use openapi::request_body::RequestBodyBuilder;
    use openapi::{ContentBuilder, Ref, Required, ResponseBuilder, Type};

    let json = |schema: &str| {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(schema)))
            .build()
    };
    let mut operation = OperationBuilder::new()
        .operation_id(Some(id))
        .tag(tag)
        .summary(Some(summary));
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            operation = operation.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(
                        openapi::ObjectBuilder::new().schema_type(Type::String),
                    )),
            );
        }
    }
    if let Some(request) = request {
        // Every write a participant takes is keyed (`crate::idempotency`).
        operation = operation.parameter(
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "The call's key: a second call with it gets the first answer again, with no second effect",
                ))
                .schema(Some(openapi::ObjectBuilder::new().schema_type(Type::String))),
        );
        operation = operation.request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json(request))
                .required(Some(Required::True))
                .build(),
        ));
    }
    // Every participant route checks the orchestrator's signature when it
    // has keys (`crate::auth`).
    let unsigned = (
        401,
        "The call is not signed by the orchestrator (the participant has AUTH_KEYS)",
    );
    for (status, description) in responses.iter().chain([&unsigned]) {
        let schema = if (200..300).contains(status) {
            answer
        } else {
            "ErrorBody"
        };
        operation = operation.response(
            status.to_string(),
            ResponseBuilder::new()
                .description(*description)
                .content("application/json", json(schema)),
        );
    }
    operation.build()
}

/// `T`'s schema and those it refers to, for a document's components.
pub fn schema<T: utoipa::ToSchema>(out: &mut Vec<(String, openapi::RefOr<openapi::Schema>)>) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

/// A document of `operations` (path, method, operation) and `schemas`.
pub fn document(
    operations: Vec<(String, openapi::path::HttpMethod, openapi::path::Operation)>,
    schemas: Vec<(String, openapi::RefOr<openapi::Schema>)>,
) -> openapi::OpenApi {
    let mut api = openapi::OpenApi::default();
    api.components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(schemas);
    for (path, method, operation) in operations {
        api.paths.add_path_operation(path, vec![method], operation);
    }
    api
}
