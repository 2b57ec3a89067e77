//! The travel saga: its names and statuses ([`model`]), its steps as data
//! ([`definition`]) and the executor that drives one saga ([`executor`]).

pub mod definition;
pub mod executor;
pub mod model;
pub mod writer;

pub use definition::{DEFINITION_VERSION, StepDef};
pub use model::{SagaStatus, Step, StepEvent, Trip, TripInput};
