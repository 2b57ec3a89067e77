//! Webhook subscriptions (`POST /webhooks`, `GET /webhooks`,
//! `DELETE /webhooks/{id}`) and a saga's deliveries
//! (`GET /sagas/{definition}/{id}/webhooks`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::extract::{Json, Path};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Error, ErrorBody, Result};
use crate::AppState;
use crate::store::{self, webhooks::Delivery, webhooks::Webhook};
use crate::webhooks::{EVENT_TYPES, check_url, new_secret};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, subscribe))
        .routes(routes!(unsubscribe))
        .routes(routes!(deliveries))
}

/// `POST /webhooks`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    /// An http:// or https:// URL.
    url: String,
    /// `saga.succeeded`, `saga.failed`, `saga.compensation_stuck`; default:
    /// every type.
    #[serde(default)]
    event_types: Vec<String>,
    /// Default: every definition.
    #[serde(default)]
    definitions: Vec<String>,
}

/// A new subscription, with its secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
struct Subscribed {
    #[serde(flatten)]
    webhook: Webhook,
    /// `whsec_` and base64: the key of every signature.
    secret: String,
}

/// Subscribes a URL to saga events.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks",
    request_body = Subscribe,
    responses(
        (status = 201, description = "Subscribed; the secret is shown this once", body = Subscribed),
        (status = 400, description = "The URL, an event type or a definition name is not acceptable, or the body is not JSON", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn subscribe(State(state): State<AppState>, Json(body): Json<Subscribe>) -> Result<Response> {
    check_url(&body.url).map_err(|err| Error::InvalidInput(format!("url: {err}")))?;
    if let Some(unknown) = body
        .event_types
        .iter()
        .find(|t| !EVENT_TYPES.contains(&t.as_str()))
    {
        return Err(Error::InvalidInput(format!(
            "event type {unknown:?} is not one of {}",
            EVENT_TYPES.join(", ")
        )));
    }
    for name in &body.definitions {
        crate::definition::validate::check_name(name)
            .map_err(|err| Error::InvalidInput(format!("definitions: {err}")))?;
    }
    let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
    let secret = new_secret();
    let webhook = state
        .engine
        .bounded(async |conn| {
            store::webhooks::create(
                conn,
                &id,
                &body.url,
                &secret,
                &body.event_types,
                &body.definitions,
            )
            .await
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Subscribed { webhook, secret })).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
struct Webhooks {
    webhooks: Vec<Webhook>,
}

/// The subscriptions (never their secrets).
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "The subscriptions", body = Webhooks),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn list(State(state): State<AppState>) -> Result<Json<Webhooks>> {
    let webhooks = state
        .engine
        .bounded(async |conn| store::webhooks::list(conn).await)
        .await?;
    Ok(Json(Webhooks { webhooks }))
}

/// Removes a subscription and its deliveries.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "The subscription is WEBHOOK_URL's", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn unsubscribe(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    if id == "config" {
        return Err(Error::SagaConflict(
            "the subscription config is WEBHOOK_URL's; unset WEBHOOK_URL to remove it".into(),
        ));
    }
    let deleted = state
        .engine
        .bounded(async |conn| store::webhooks::delete(conn, &id).await)
        .await?;
    if !deleted {
        return Err(Error::Missing(format!(
            "no webhook {id:?}; GET /webhooks lists them"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
struct Deliveries {
    deliveries: Vec<Delivery>,
}

/// The webhook deliveries of one saga, and their attempts.
#[utoipa::path(get, path = "/sagas/{definition}/{id}/webhooks", tag = "webhooks",
    params(
        ("definition" = String, Path, description = "The definition's name"),
        ("id" = String, Path, description = "The saga's id"),
    ),
    responses(
        (status = 200, description = "Its deliveries, oldest first", body = Deliveries),
        (status = 400, description = "The id is not acceptable", body = ErrorBody),
        (status = 404, description = "No saga of that id and definition", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn deliveries(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
) -> Result<Json<Deliveries>> {
    super::sagas::saga_id(&id)?;
    let (saga, deliveries) = state
        .engine
        .bounded(async |conn| {
            let saga = store::find(&mut *conn, &id).await?;
            let deliveries = store::webhooks::deliveries(&mut *conn, &id).await?;
            Ok((saga, deliveries))
        })
        .await?;
    if saga.is_none_or(|saga| saga.definition != definition) {
        return Err(super::sagas::missing(&definition, &id));
    }
    Ok(Json(Deliveries { deliveries }))
}
