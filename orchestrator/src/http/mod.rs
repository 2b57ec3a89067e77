//! The orchestrator's HTTP API: [`sagas`] (start, read and list sagas of any
//! definition), [`events`] (a saga's changes as they happen), [`definitions`] (register, read, validate and dry-run
//! definitions), [`trips`] (the travel sample's API, onto the `travel`
//! definition), [`webhooks`] (subscriptions, and a saga's deliveries) and
//! the health probes.

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

pub mod access;
pub mod definitions;
mod error;
pub mod events;
pub mod sagas;
pub mod trips;
pub mod webhooks;

pub(crate) use common::error::ErrorBody;
pub(crate) use error::DiagnosticsBody;
pub use error::{Error, Result};

/// The address a request came from: none when the router is called without
/// `common::server::serve` (a test calling it directly).
pub(crate) struct ClientAddr(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        let connected = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(Self(connected.map(|c| c.0.ip())))
    }
}

impl AppState {
    /// Takes one of the client's starts (`START_RATE_PER_CLIENT`): a
    /// start route's first check, before any parsing or reading.
    pub(crate) fn take_start(&self, client: &ClientAddr) -> Result<()> {
        match client.0 {
            Some(ip) => Ok(self.engine.check_start_rate(ip)?),
            None => Ok(()),
        }
    }
}

/// The routes and their OpenAPI document, from the same registrations;
/// the probes, `/metrics` and `/openapi.json` are every service's
/// (`common::openapi`).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(trips::router())
        .merge(sagas::router())
        .merge(events::router())
        .merge(definitions::router())
        .merge(webhooks::router())
}
