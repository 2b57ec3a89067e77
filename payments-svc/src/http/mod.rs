//! The HTTP API of payments-svc: [`payments`] and the health probes.

use axum::Router;

use crate::AppState;

mod error;
pub mod payments;

pub use error::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    let api = common::openapi::finish(
        "payments-svc",
        "Payments: charge, refund (a participant of the travel saga)",
        payments::api(),
    );
    Router::new()
        .merge(payments::router())
        .merge(common::health::router())
        .merge(common::openapi::router(&api))
}
