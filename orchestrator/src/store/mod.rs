//! Every read and write of the orchestrator's tables: the sagas and their
//! log ([`sagas`]) and the definitions ([`definitions`]).

pub mod definitions;
pub mod sagas;

pub use sagas::*;
