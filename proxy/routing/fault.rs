//! Fault injection per route (the decision; `http::fault` serves it), to rehearse failures in staging: delay or abort a share of the
//! requests, optionally only those the split sent to one upstream (make the canary fail and
//! watch the rollout roll back).
//!
//! Sampling is deterministic: a counter per (upstream, kind) fires when the running share
//! crosses the next step, so over any run of N requests exactly `percent` of N (±1) are hit;
//! a random starting point keeps the delay and abort counters from hitting the same requests.
//!
//! Accounting: an abort never reaches a backend. It counts as the upstream's response in the
//! route's statistics (`switchyard_requests_total` with backend "", the rollout gates' error
//! rate: a rehearsed canary failure must trip the gates as a real one would), but never in any
//! backend's breaker: a breaker judges one backend's health, an injected fault says nothing
//! about it, and opening breakers on healthy backends would reroute the faulted share to
//! other upstreams, hiding the rehearsed failure from the gates and outliving the fault.
//! A delay is served before the request is sent, and does not count against the route's
//! timeout (as Envoy's fault filter runs before its router).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::config::model::Fault;
use crate::stats::traffic::FaultCounts;

const MILLION: u64 = 1_000_000;

/// Fires on exactly `percent` of the calls over any run.
struct Sampler {
    per_million: u64,
    n: AtomicU64,
}

impl Sampler {
    fn new(percent: f64, start: u64) -> Sampler {
        Sampler {
            per_million: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u64,
            n: AtomicU64::new(start % MILLION),
        }
    }

    fn fire(&self) -> bool {
        let n = u128::from(self.n.fetch_add(1, Ordering::Relaxed));
        let p = u128::from(self.per_million);
        let m = u128::from(MILLION);
        (n + 1) * p / m > n * p / m
    }
}

/// A route's fault, as the request path uses it.
pub(crate) struct RouteFault {
    delay: Option<Duration>,
    abort: Option<StatusCode>,
    /// Index-aligned with the route's targets; `None` where the fault does not apply.
    targets: Vec<Option<TargetFault>>,
}

struct TargetFault {
    delay: Sampler,
    abort: Sampler,
    counts: Arc<FaultCounts>,
}

/// What was injected into one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Injected {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<StatusCode>,
}

impl RouteFault {
    /// `upstreams` in the route's target order; `counts(upstream)` gives its kept counters.
    pub(crate) fn new(
        spec: &Fault,
        upstreams: &[&str],
        mut counts: impl FnMut(&str) -> Arc<FaultCounts>,
    ) -> RouteFault {
        let targets = upstreams
            .iter()
            .map(|&u| {
                let applies = spec.upstream.as_deref().is_none_or(|only| only == u);
                applies.then(|| TargetFault {
                    delay: Sampler::new(
                        spec.delay.as_ref().map_or(0.0, |d| d.percent),
                        super::pick::fast_random(),
                    ),
                    abort: Sampler::new(
                        spec.abort.as_ref().map_or(0.0, |a| a.percent),
                        super::pick::fast_random(),
                    ),
                    counts: counts(u),
                })
            })
            .collect();
        RouteFault {
            delay: spec.delay.as_ref().map(|d| d.duration),
            abort: spec
                .abort
                .as_ref()
                .map(|a| StatusCode::from_u16(a.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)),
            targets,
        }
    }

    /// The counters of each target (index-aligned), `None` where the fault does not apply.
    pub(crate) fn counts(&self) -> impl Iterator<Item = Option<&FaultCounts>> {
        self.targets.iter().map(|t| t.as_ref().map(|t| &*t.counts))
    }

    /// Decides what to inject into a request the split sent to `target`, and counts it.
    pub(crate) fn decide(&self, target: usize) -> Injected {
        let Some(Some(t)) = self.targets.get(target) else {
            return Injected::default();
        };
        let delay = self.delay.filter(|_| t.delay.fire());
        let abort = self.abort.filter(|_| t.abort.fire());
        if delay.is_some() {
            t.counts.delayed();
        }
        if abort.is_some() {
            t.counts.aborted();
        }
        Injected { delay, abort }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{FaultAbort, FaultDelay};

    #[test]
    fn the_sampler_is_exact_over_any_run() {
        for (percent, start) in [(10.0, 0), (33.3, 987_654), (0.5, 17), (100.0, 5), (0.0, 3)] {
            let s = Sampler::new(percent, start);
            let hits = (0..10_000).filter(|_| s.fire()).count() as f64;
            let want = percent * 100.0;
            assert!((hits - want).abs() <= 1.0, "{percent}%: {hits} of 10000");
        }
    }

    #[test]
    fn a_scoped_fault_hits_only_its_upstream() {
        let spec = Fault {
            delay: Some(FaultDelay {
                percent: 50.0,
                duration: Duration::from_millis(5),
            }),
            abort: Some(FaultAbort {
                percent: 100.0,
                status: 503,
            }),
            upstream: Some("green".into()),
        };
        let counts: Arc<FaultCounts> = Arc::default();
        let f = RouteFault::new(&spec, &["blue", "green"], |_| Arc::clone(&counts));
        for _ in 0..100 {
            assert_eq!(f.decide(0), Injected::default());
            assert_eq!(f.decide(1).abort, Some(StatusCode::SERVICE_UNAVAILABLE));
        }
        assert_eq!(counts.read(), (50, 100));
    }
}
