//! Running sagas: the statuses every saga shares ([`model`]), the engine
//! that starts them and wakes the requests waiting for them ([`engine`]),
//! the bound on the sagas driven at once ([`admission`]),
//! the driving of one saga ([`drive`]), the takeover of sagas whose process
//! stopped ([`recovery`]), the one batching writer of saga state
//! ([`writer`]), an operator's actions on one saga ([`action`]), and a saga
//! as the API shows it ([`view`]).

pub mod action;
pub mod admission;
pub mod drive;
pub mod engine;
pub mod model;
pub mod recovery;
pub mod view;
pub mod writer;

pub use model::{SagaStatus, StepEvent};
