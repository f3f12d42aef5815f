//! Counts over a sliding window, lock-free: ten slots of a tenth of the window each, every slot
//! tagged with the period it counts so a stale one is recognised and reset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::clock::Tick;

const SLOTS: usize = 10;

#[derive(Default)]
struct Slot {
    period: AtomicU64,
    total: AtomicU64,
    failed: AtomicU64,
}

/// Requests and failures over the last `window`.
pub(crate) struct WindowCounts {
    slots: [Slot; SLOTS],
    slot_nanos: u64,
}

/// What a window holds: requests and how many of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub total: u64,
    pub failed: u64,
}

impl Totals {
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.failed as f64 / self.total as f64
        }
    }
}

impl WindowCounts {
    pub(crate) fn new(window: Duration) -> Self {
        WindowCounts {
            slots: Default::default(),
            slot_nanos: (window.as_nanos() as u64 / SLOTS as u64).max(1),
        }
    }

    pub(crate) fn record(&self, at: impl Into<Tick>, failed: bool) {
        self.add(at, 1, u64::from(failed));
    }

    pub(crate) fn add(&self, at: impl Into<Tick>, total: u64, failed: u64) {
        // Period 0 marks a never-used slot; real periods start at 1.
        let period = at.into().0 / self.slot_nanos + 1;
        let slot = &self.slots[period as usize % SLOTS];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A slot from a past lap: start it over. A count racing with this reset may be
            // lost; these are statistics, not money.
            slot.total.store(0, Ordering::Release);
            slot.failed.store(0, Ordering::Release);
        }
        slot.total.fetch_add(total, Ordering::AcqRel);
        if failed > 0 {
            slot.failed.fetch_add(failed, Ordering::AcqRel);
        }
    }

    /// Forgets everything counted so far.
    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.period.store(0, Ordering::Release);
            slot.total.store(0, Ordering::Release);
            slot.failed.store(0, Ordering::Release);
        }
    }

    /// Totals of the slots within the window ending now.
    pub(crate) fn sum(&self, at: impl Into<Tick>) -> Totals {
        let current = at.into().0 / self.slot_nanos + 1;
        let oldest = current.saturating_sub(SLOTS as u64 - 1);
        let mut c = Totals::default();
        for slot in &self.slots {
            let p = slot.period.load(Ordering::Acquire);
            if p >= oldest && p <= current {
                c.total += slot.total.load(Ordering::Acquire);
                c.failed += slot.failed.load(Ordering::Acquire);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn counts_slide_out_of_the_window() {
        let w = WindowCounts::new(Duration::from_secs(10));
        for i in 0..10 {
            w.record(Instant::now(), i % 2 == 0);
        }
        assert_eq!(
            w.sum(Instant::now()),
            Totals {
                total: 10,
                failed: 5
            }
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        w.record(Instant::now(), true);
        assert_eq!(
            w.sum(Instant::now()),
            Totals {
                total: 11,
                failed: 6
            }
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            w.sum(Instant::now()),
            Totals {
                total: 1,
                failed: 1
            }
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(w.sum(Instant::now()), Totals::default());
        assert_eq!(
            Totals {
                total: 4,
                failed: 1
            }
            .failure_rate(),
            0.25
        );
    }
}
