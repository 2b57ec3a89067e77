//! The HTTP API of flights-svc: [`reservations`] under `/reservations`, and
//! the health probes.

use axum::Router;

use crate::AppState;

pub mod reservations;

pub use common::booking::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    let api = common::openapi::finish(
        "flights-svc",
        "Flight reservations: reserve, confirm, cancel (a participant of the travel saga)",
        common::booking::api::<reservations::Flights>("/reservations"),
    );
    Router::new()
        .merge(common::booking::router::<reservations::Flights, _>(
            "/reservations",
        ))
        .merge(common::health::router())
        .merge(common::openapi::router(&api))
}
