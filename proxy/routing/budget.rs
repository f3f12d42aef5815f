//! A retry budget (as Envoy's and tower's): retries may add at most a share of the route's
//! recent requests, plus a small floor per second, so that retrying can never multiply the load
//! on an upstream that is already failing.

use std::time::Duration;

use tokio::time::Instant;

use crate::stats::WindowCounts;

const WINDOW: Duration = Duration::from_secs(10);

pub(crate) struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    /// `total` counts first tries, `failed` counts retries.
    window: WindowCounts,
}

/// Whether one more retry fits: retries so far stay within `percent` of the requests plus the
/// floor, over the same window.
fn allows(
    requests: u64,
    retries: u64,
    percent: f64,
    min_per_second: u32,
    window: Duration,
) -> bool {
    let floor = f64::from(min_per_second) * window.as_secs_f64();
    (retries + 1) as f64 <= floor + requests as f64 * percent / 100.0
}

impl RetryBudget {
    pub(crate) fn new(percent: f64, min_per_second: u32) -> Self {
        RetryBudget {
            percent,
            min_per_second,
            window: WindowCounts::new(WINDOW),
        }
    }

    pub(crate) fn same_spec(&self, percent: f64, min_per_second: u32) -> bool {
        self.percent == percent && self.min_per_second == min_per_second
    }

    /// Every first try deposits into the budget.
    pub(crate) fn deposit(&self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// Takes one retry from the budget if there is room.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let c = self.window.sum(now);
        if allows(c.total, c.failed, self.percent, self.min_per_second, WINDOW) {
            self.window.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_allows_retries_at_low_traffic_and_the_share_caps_them_at_high() {
        let w = Duration::from_secs(10);
        assert!(
            allows(0, 29, 20.0, 3, w),
            "30 retries in 10 s from the floor alone"
        );
        assert!(!allows(0, 30, 20.0, 3, w));
        assert!(allows(1000, 229, 20.0, 3, w), "30 + 20% of 1000");
        assert!(!allows(1000, 230, 20.0, 3, w));
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_stop_when_the_budget_is_spent() {
        let b = RetryBudget::new(20.0, 1);
        let now = Instant::now();
        for _ in 0..100 {
            b.deposit(now);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 30, "10 (floor) + 20% of 100");
    }
}
