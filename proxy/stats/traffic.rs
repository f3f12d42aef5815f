//! What rate limits and faults did, kept across reloads by the route keeper.

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests a route's limit turned away.
#[derive(Debug, Default)]
pub(crate) struct RateLimitCounts {
    limited: AtomicU64,
}

impl RateLimitCounts {
    /// One request answered 429.
    pub(crate) fn limited(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

/// Faults injected on one (route, upstream).
#[derive(Debug, Default)]
pub(crate) struct FaultCounts {
    delayed: AtomicU64,
    aborted: AtomicU64,
}

impl FaultCounts {
    pub(crate) fn delayed(&self) {
        self.delayed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn aborted(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// (delayed, aborted) so far.
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.delayed.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
        )
    }
}
