//! Backends: their lasting state, their connection pools, the registry that owns both, and
//! the DNS discovery that finds them.

pub mod breaker;
pub mod discovery;
pub(crate) mod h2io;
pub(crate) mod h2req;
pub mod health;
pub(crate) mod multiplex;
pub mod pool;
pub mod registry;
pub mod state;
pub mod tls;

pub use registry::{Backend, BackendKey, Registry};
pub(crate) use state::{BackendState, InFlight};
