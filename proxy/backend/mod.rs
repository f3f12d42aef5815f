//! Backends: their lasting state, their connection pools, and the registry that owns both.

pub mod registry;
pub mod state;
pub mod transport;

pub use registry::{Backend, BackendKey, Registry};
pub use state::{BackendState, InFlight};
