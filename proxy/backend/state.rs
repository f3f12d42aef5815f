//! What switchyard knows about one backend. It lives in the registry, outside any snapshot, so
//! it survives every reload that keeps the backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::model::BackendAddr;

#[derive(Debug)]
pub struct BackendState {
    pub upstream: Arc<str>,
    pub addr: BackendAddr,
    in_flight: AtomicU64,
}

impl BackendState {
    pub fn new(upstream: Arc<str>, addr: BackendAddr) -> Self {
        BackendState {
            upstream,
            addr,
            in_flight: AtomicU64::new(0),
        }
    }

    /// Requests sent to this backend whose response has not finished streaming.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight to a backend until it is dropped.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn start(state: &Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(state))
    }

    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
