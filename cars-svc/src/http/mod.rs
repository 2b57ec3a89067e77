//! The HTTP API of cars-svc: [`rentals`] and the health probes.

use axum::Router;

use crate::AppState;

mod error;
pub mod rentals;

pub use error::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(rentals::router())
        .merge(common::health::router())
}
