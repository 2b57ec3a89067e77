//! The HTTP API of cars-svc: [`rentals`] under `/rentals`, and
//! the health probes.

use axum::Router;

use crate::AppState;

pub mod rentals;

pub use common::booking::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(common::booking::router::<rentals::Cars, _>("/rentals"))
        .merge(common::health::router())
}
