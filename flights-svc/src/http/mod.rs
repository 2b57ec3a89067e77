//! The HTTP API of flights-svc: [`reservations`] under `/reservations`, and
//! the health probes.

use axum::Router;

use crate::AppState;

pub mod reservations;

pub use common::booking::{Error, Result};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .merge(common::booking::router::<reservations::Flights, _>(
            "/reservations",
        ))
        .merge(common::health::router())
}
