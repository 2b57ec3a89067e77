//! `GET /healthz` (the process is up) and `GET /readyz` (its database
//! answers), the same in every service.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::db::Db;

/// The two probe routes, for a router whose state can give a [`Db`].
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Db: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// A probe's answer.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Probe {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Probe)))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The process is up and its database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Probe),
        (status = 503, description = "The database does not answer", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn readyz(State(db): State<Db>) -> Response {
    let ping = db.run(async |conn| sqlx::query("SELECT 1").execute(conn).await);
    match ping.await {
        Ok(_) => Json(json!({ "status": "ready" })).into_response(),
        Err(err) => {
            tracing::warn!(%err, "readiness check failed");
            crate::error::database_unavailable()
        }
    }
}
