//! The orchestrator's HTTP API: [`sagas`] (start, read and list sagas of any
//! definition), [`events`] (a saga's changes as they happen), [`definitions`] (register, read, validate and dry-run
//! definitions), [`trips`] (the travel sample's API, onto the `travel`
//! definition), [`webhooks`] (subscriptions, and a saga's deliveries) and
//! the health probes.

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

pub mod definitions;
mod error;
pub mod events;
pub mod sagas;
pub mod trips;
pub mod webhooks;

pub(crate) use common::error::ErrorBody;
pub(crate) use error::DiagnosticsBody;
pub use error::{Error, Result};

/// The routes and their OpenAPI document, from the same registrations;
/// the probes, `/metrics` and `/openapi.json` are every service's
/// (`common::openapi`).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(trips::router())
        .merge(sagas::router())
        .merge(events::router())
        .merge(definitions::router())
        .merge(webhooks::router())
}
