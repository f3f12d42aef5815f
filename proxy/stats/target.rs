//! What one route sent to one of its upstreams: the numbers rollouts compare between arms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Buckets, Outcome, Recorder};
use crate::config::grpc::NAMES as GRPC_NAMES;

pub(crate) struct TargetStats {
    /// Whole request, first byte in to last byte out: `switchyard_request_duration_seconds`.
    duration: Buckets,
    /// Time to the response head, cumulative: a rollout diffs two snapshots to get a step.
    latency: Recorder,
    /// Final outcome of each request this target answered, by [`Outcome::index`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Requests picked for this target but sent elsewhere: every backend was out.
    rerouted_away: AtomicU64,
    /// Requests this target took for another target of the route.
    rerouted_in: AtomicU64,
    retries: AtomicU64,
    /// Retries the budget refused.
    retries_denied: AtomicU64,
    /// Answers to gRPC requests by the `grpc-status` the client got, by code; the last slot:
    /// none arrived.
    grpc: [AtomicU64; GRPC_SLOTS],
}

/// The 17 gRPC status codes, then "none".
const GRPC_SLOTS: usize = GRPC_NAMES.len() + 1;

/// A reading of a target's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TargetCounts {
    pub(crate) rerouted_away: u64,
    pub(crate) rerouted_in: u64,
    pub(crate) retries: u64,
    pub(crate) retries_denied: u64,
}

impl TargetStats {
    pub(crate) fn new(workers: usize) -> Self {
        TargetStats {
            duration: Buckets::default(),
            latency: Recorder::cumulative(workers),
            outcomes: Default::default(),
            rerouted_away: AtomicU64::new(0),
            rerouted_in: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
            grpc: Default::default(),
        }
    }

    /// A gRPC request was answered with `code` (`None`: the answer ended without one).
    pub(crate) fn grpc_answered(&self, code: Option<u8>) {
        let slot = code.map_or(GRPC_SLOTS - 1, |c| usize::from(c).min(GRPC_SLOTS - 1));
        self.grpc[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Answers to gRPC requests by the `code` label (`OK`, `UNAVAILABLE`..., `none`).
    pub(crate) fn grpc_by_code(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        GRPC_NAMES
            .iter()
            .copied()
            .chain(["none"])
            .zip(self.grpc.iter().map(|n| n.load(Ordering::Relaxed)))
    }

    /// One request this target answered: its outcome as rollouts count it (`None` when it
    /// says nothing about the upstream: the client's doing or the proxy's own shortage), its
    /// time to the response head, and its whole duration.
    pub(crate) fn answered(
        &self,
        outcome: Option<Outcome>,
        ttfb: Option<Duration>,
        duration: Duration,
        now: Instant,
    ) {
        if let Some(o) = outcome {
            self.outcomes[o.index()].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = ttfb {
            self.latency.record(t, now);
        }
        self.duration.record(duration);
    }

    /// A request the split picked this target for went to another one.
    pub(crate) fn rerouted_away(&self) {
        self.rerouted_away.fetch_add(1, Ordering::Relaxed);
    }

    /// This target took a request the split picked another one for.
    pub(crate) fn rerouted_in(&self) {
        self.rerouted_in.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed try at this target was tried again.
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed try at this target could have been retried but the budget said no.
    pub(crate) fn retry_denied(&self) {
        self.retries_denied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> TargetCounts {
        TargetCounts {
            rerouted_away: self.rerouted_away.load(Ordering::Relaxed),
            rerouted_in: self.rerouted_in.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            retries_denied: self.retries_denied.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn duration(&self) -> &Buckets {
        &self.duration
    }

    /// Every time to a response head so far.
    pub(crate) fn latency(&self, now: Instant) -> hdrhistogram::Histogram<u64> {
        self.latency.snapshot(now)
    }

    pub(crate) fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> u64 {
        Outcome::ALL.iter().map(|&o| self.outcome(o)).sum()
    }

    pub(crate) fn failures(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_failure())
            .map(|&o| self.outcome(o))
            .sum()
    }
}
