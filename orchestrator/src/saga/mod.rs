//! The travel saga: its names and statuses ([`model`]), its steps as data
//! ([`definition`]), the executor that drives one saga ([`executor`]), and
//! a saga as the API shows it ([`view`]).

pub mod definition;
pub mod executor;
pub mod model;
pub mod view;
pub mod writer;

pub use definition::{DEFINITION_VERSION, StepDef};
pub use model::{SagaStatus, Step, StepEvent, Trip, TripInput};
