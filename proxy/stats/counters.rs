//! Lock-free request counters, kept by the reloader across reloads so that Prometheus counters
//! never go backwards while their series exist.

use std::sync::atomic::{AtomicU64, Ordering};

/// `code_class` label values, indexed by [`code_class`].
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index into [`CODE_CLASSES`] of a status code.
pub fn code_class(status: u16) -> usize {
    (usize::from(status / 100).clamp(1, 5)) - 1
}

/// Responses by status class for one (route, upstream, backend).
#[derive(Debug, Default)]
pub struct RequestCounters {
    by_class: [AtomicU64; 5],
}

impl RequestCounters {
    pub fn record(&self, status: u16) {
        self.by_class[code_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, class: usize) -> u64 {
        self.by_class[class].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        (0..CODE_CLASSES.len()).map(|c| self.get(c)).sum()
    }
}

/// Process-wide counters that belong to no route.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    pub reloads_applied: AtomicU64,
    pub reloads_rejected: AtomicU64,
    pub reloads_unchanged: AtomicU64,
    pub no_route: AtomicU64,
    pub bad_requests: AtomicU64,
    pub tls: super::tls::TlsCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(CODE_CLASSES[code_class(200)], "2xx");
        assert_eq!(CODE_CLASSES[code_class(101)], "1xx");
        assert_eq!(CODE_CLASSES[code_class(504)], "5xx");
        assert_eq!(CODE_CLASSES[code_class(999)], "5xx");
    }
}
