//! Backends: their lasting state, their connection pools, and the registry that owns both.

pub mod breaker;
pub mod health;
pub mod pool;
pub mod registry;
pub mod state;
pub mod tls;

pub use registry::{Backend, BackendKey, Registry};
pub(crate) use state::InFlight;
