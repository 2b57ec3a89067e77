//! Every read and write of the orchestrator's tables: the sagas and their
//! log ([`sagas`]), the definitions ([`definitions`]) and the webhook
//! subscriptions and deliveries ([`webhooks`]).

pub mod definitions;
pub mod sagas;
pub mod webhooks;

pub use sagas::*;
