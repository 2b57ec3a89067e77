//! The HTTP API of cars-svc: [`rentals`] under `/rentals`, and
//! the health probes.

use axum::Router;

use crate::AppState;

pub mod rentals;

pub use common::booking::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    let api = common::openapi::finish(
        "cars-svc",
        "Car rentals: reserve, confirm, cancel (a participant of the travel saga)",
        common::booking::api::<rentals::Cars>("/rentals"),
    );
    Router::new()
        .merge(common::booking::router::<rentals::Cars, _>("/rentals"))
        .merge(common::health::router())
        .merge(common::openapi::router(&api))
}
