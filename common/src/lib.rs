//! What the four services of the travel saga share, and nothing else.
//!
//! - [`wire`]: the contract between the orchestrator and the participants: run
//!   types, statuses, request and response bodies, the idempotency header.
//! - [`error`] and [`extract`]: the JSON error body every service answers with,
//!   and extractors whose rejections use it.
//! - [`server`], [`db`], [`telemetry`], [`shutdown`]: start-up and shutdown
//!   plumbing, so that every `main.rs` stays thin.
//! - [`metrics`]: a Prometheus registry per service, its request metrics,
//!   `GET /metrics`.
//! - [`text`]: the control characters no request may carry.
//! - [`auth`]: the orchestrator's calls to a participant, signed and checked.
//! - [`roles`]: each service's own database role, owning only its schema.

pub mod auth;
pub mod booking;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod roles;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod wire;
