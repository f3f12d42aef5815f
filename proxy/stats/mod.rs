//! What switchyard counts and measures, and how it is exposed.

pub mod counters;
pub mod prometheus;

pub use counters::{CounterRegistry, GlobalCounters, RequestCounters};
