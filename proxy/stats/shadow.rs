//! What shadow traffic found for one route: the interface between the shadow mirror (which
//! writes it) and the rollout controller (which gates on it). Cumulative, lock-free: a reader
//! diffs two readings to get a rate over any stretch it cares about (a rollout step).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Shadow responses compared with their primary's.
    compared: AtomicU64,
    /// Of those, the ones that differed (status, selected headers or body).
    mismatched: AtomicU64,
}

/// A reading of [`ShadowStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    pub compared: u64,
    pub mismatched: u64,
}

impl ShadowCounts {
    /// The counts between an earlier reading and this one.
    pub fn since(self, earlier: ShadowCounts) -> ShadowCounts {
        ShadowCounts {
            compared: self.compared.saturating_sub(earlier.compared),
            mismatched: self.mismatched.saturating_sub(earlier.mismatched),
        }
    }

    /// Mismatched share of compared, `None` before anything was compared.
    pub fn mismatch_rate(self) -> Option<f64> {
        (self.compared > 0).then(|| self.mismatched as f64 / self.compared as f64)
    }
}

impl ShadowStats {
    pub fn record(&self, mismatched: bool) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        if mismatched {
            self.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> ShadowCounts {
        ShadowCounts {
            compared: self.compared.load(Ordering::Relaxed),
            mismatched: self.mismatched.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_diff_into_a_rate() {
        let s = ShadowStats::default();
        assert_eq!(s.read().mismatch_rate(), None);
        s.record(false);
        let start = s.read();
        s.record(true);
        s.record(false);
        let step = s.read().since(start);
        assert_eq!(
            step,
            ShadowCounts {
                compared: 2,
                mismatched: 1
            }
        );
        assert_eq!(step.mismatch_rate(), Some(0.5));
    }
}
