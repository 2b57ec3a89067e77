//! The orchestrator's HTTP API: [`trips`] (start, read and list sagas) and
//! the health probes.

use axum::Router;

use crate::AppState;

mod error;
pub mod trips;

pub use error::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(trips::router())
        .merge(common::health::router())
}
