//! Webhook subscriptions (`POST /webhooks`, `GET /webhooks`,
//! `DELETE /webhooks/{id}`) and a saga's deliveries
//! (`GET /sagas/{definition}/{id}/webhooks`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use common::extract::{Json, Path};
use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::AppState;
use crate::store::{self, webhooks::Delivery, webhooks::Webhook};
use crate::webhooks::{EVENT_TYPES, check_url, new_secret};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list).post(subscribe))
        .route("/webhooks/{id}", delete(unsubscribe))
        .route("/sagas/{definition}/{id}/webhooks", get(deliveries))
}

/// `POST /webhooks`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    url: String,
    /// Default: every type.
    #[serde(default)]
    event_types: Vec<String>,
    /// Default: every definition.
    #[serde(default)]
    definitions: Vec<String>,
}

/// A new subscription, with its secret: shown this once.
#[derive(Debug, Serialize)]
struct Subscribed {
    #[serde(flatten)]
    webhook: Webhook,
    secret: String,
}

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

#[derive(Debug, Serialize)]
struct Webhooks {
    webhooks: Vec<Webhook>,
}

async fn list(State(state): State<AppState>) -> Result<Json<Webhooks>> {
    let webhooks = state
        .engine
        .bounded(async |conn| store::webhooks::list(conn).await)
        .await?;
    Ok(Json(Webhooks { webhooks }))
}

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

#[derive(Debug, Serialize)]
struct Deliveries {
    deliveries: Vec<Delivery>,
}

async fn deliveries(
    State(state): State<AppState>,
    Path((definition, id)): Path<(String, String)>,
) -> Result<Json<Deliveries>> {
    common::wire::validate_trip_id(&id)
        .map_err(|err| Error::InvalidInput(err.replace("trip id", "saga id")))?;
    let (saga, deliveries) = state
        .engine
        .bounded(async |conn| {
            let saga = store::find(&mut *conn, &id).await?;
            let deliveries = store::webhooks::deliveries(&mut *conn, &id).await?;
            Ok((saga, deliveries))
        })
        .await?;
    if saga.is_none_or(|saga| saga.definition != definition) {
        return Err(Error::Missing(format!(
            "no saga {id} of definition {definition}"
        )));
    }
    Ok(Json(Deliveries { deliveries }))
}
