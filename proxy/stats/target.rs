//! What one route sent to one of its upstreams: the numbers rollouts compare between arms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Buckets, Outcome, Recorder};

pub struct TargetStats {
    /// Whole request, first byte in to last byte out: `switchyard_request_duration_seconds`.
    pub duration: Buckets,
    /// Time to the response head, cumulative: a rollout diffs two snapshots to get a step.
    pub latency: Recorder,
    /// Final outcome of each request this target answered, by [`Outcome::index`].
    pub outcomes: [AtomicU64; 5],
    /// Requests picked for this target but sent elsewhere: every backend was out.
    pub rerouted_away: AtomicU64,
    /// Requests this target took for another target of the route.
    pub rerouted_in: AtomicU64,
    pub retries: AtomicU64,
    /// Retries the budget refused.
    pub retries_denied: AtomicU64,
}

impl TargetStats {
    pub fn new(workers: usize) -> Self {
        TargetStats {
            duration: Buckets::default(),
            latency: Recorder::cumulative(workers),
            outcomes: Default::default(),
            rerouted_away: AtomicU64::new(0),
            rerouted_in: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
        }
    }

    pub fn record(&self, outcome: Outcome, ttfb: Option<Duration>, now: Instant) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(t) = ttfb {
            self.latency.record(t, now);
        }
    }

    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()].load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        Outcome::ALL.iter().map(|&o| self.outcome(o)).sum()
    }

    pub fn failures(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_failure())
            .map(|&o| self.outcome(o))
            .sum()
    }
}
