//! The four real services over HTTP on port 0, on a fresh database per test.

mod access;
mod actions;
mod auth;
mod bad_input;
mod browser;
mod console;
mod crashes;
mod definitions;
mod events;
mod faults;
mod flows;
mod hangups;
mod metrics;
mod openapi;
mod overload;
mod poison;
mod roles;
mod support;
mod tls;
mod traces;
mod webhooks;
