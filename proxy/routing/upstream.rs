//! One upstream's backends as a snapshot serves them, and which of them takes a try.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::pick;
use crate::backend::Backend;
use crate::backend::state::Ticket;
use crate::config::model::Upstream;

pub(crate) struct UpstreamRuntime {
    pub(crate) spec: Arc<Upstream>,
    pub(crate) backends: Vec<Backend>,
    rr: AtomicUsize,
}

impl UpstreamRuntime {
    pub(crate) fn new(spec: Arc<Upstream>, backends: Vec<Backend>) -> UpstreamRuntime {
        UpstreamRuntime {
            spec,
            backends,
            rr: AtomicUsize::new(0),
        }
    }

    fn next_rr(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// A backend not excluded, healthy and admitted by its breaker, with the breaker's ticket.
    /// Past the upstream's panic threshold (more than that share out, but not all), every
    /// backend is fair game again, so that a partial outage does not pile everything onto the
    /// few left.
    pub(crate) fn pick(
        &self,
        excluded: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<(usize, Ticket)> {
        let backends = &self.backends;
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let in_flight = |i: usize| backends[i].state.in_flight();
        let ok = |i: usize| !excluded(i) && backends[i].state.available(now);
        // The common case: both candidates are fine; no need to look at the rest. With one
        // backend they are the same, asked once.
        let (a, b) = pick::two_choices(n, self.next_rr(), pick::fast_random());
        if ok(a) && (a == b || ok(b)) {
            let i = pick::less_loaded(a, b, in_flight);
            let ticket = backends[i].state.admit(now);
            if !ticket.is_refused() {
                return Some((i, ticket));
            }
        }
        if self.panic_mode(excluded, now) {
            let i = pick::pick(n, self.next_rr(), pick::fast_random(), in_flight, |i| {
                !excluded(i) && !backends[i].state.is_pending()
            })?;
            return Some((i, Ticket::unchecked()));
        }
        // Breakers that refuse (half-open and full of probes) are skipped on the next round.
        let mut refused: Vec<usize> = Vec::new();
        for _ in 0..n {
            let usable = |i: usize| ok(i) && !refused.contains(&i);
            let i = pick::pick(n, self.next_rr(), pick::fast_random(), in_flight, usable)?;
            let ticket = backends[i].state.admit(now);
            if !ticket.is_refused() {
                return Some((i, ticket));
            }
            refused.push(i);
        }
        None
    }

    /// Whether some backend not excluded could take a try now (without admitting one).
    pub(crate) fn any_available(&self, excluded: &dyn Fn(usize) -> bool, now: Instant) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| !excluded(i) && b.state.available(now))
    }

    /// More than the threshold of the backends still in play are out (but not all of them).
    /// Pods not yet checked are not in play: they are not out, they are not in yet.
    fn panic_mode(&self, excluded: &dyn Fn(usize) -> bool, now: Instant) -> bool {
        let threshold = u64::from(self.spec.panic_threshold);
        if threshold >= 100 {
            return false;
        }
        let (mut considered, mut out) = (0u64, 0u64);
        for (i, b) in self.backends.iter().enumerate() {
            if !excluded(i) && !b.state.is_pending() {
                considered += 1;
                out += u64::from(!b.state.available(now));
            }
        }
        out > 0 && out < considered && out * 100 > considered * threshold
    }
}
