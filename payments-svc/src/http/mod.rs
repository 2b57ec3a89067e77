//! The HTTP API of payments-svc: [`payments`] and the health probes.

use axum::Router;

use crate::AppState;

mod error;
pub mod payments;

pub use error::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(payments::router())
        .merge(common::health::router())
}
