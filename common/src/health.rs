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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(db): State<Db>) -> Response {
    let ping = db.run(async |conn| sqlx::query("SELECT 1").execute(conn).await);
    match ping.await {
        Ok(_) => Json(json!({ "status": "ready" })).into_response(),
        Err(err) => {
            tracing::warn!(%err, "readiness check failed");
            crate::error::database_unavailable()
        }
    }
}
