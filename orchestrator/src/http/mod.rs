//! The orchestrator's HTTP API: [`sagas`] (start, read and list sagas of any
//! definition), [`definitions`] (register, read, validate and dry-run
//! definitions), [`trips`] (the travel sample's API, onto the `travel`
//! definition), [`webhooks`] (subscriptions, and a saga's deliveries) and
//! the health probes.

use axum::Router;

use crate::AppState;

pub mod definitions;
mod error;
pub mod sagas;
pub mod trips;
pub mod webhooks;

pub use error::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(trips::router())
        .merge(sagas::router())
        .merge(definitions::router())
        .merge(webhooks::router())
        .merge(common::health::router())
}
