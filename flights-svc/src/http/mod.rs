//! The HTTP API of flights-svc: [`reservations`] and the health probes.

use axum::Router;

use crate::AppState;

mod error;
pub mod reservations;

pub use error::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(reservations::router())
        .merge(common::health::router())
}
