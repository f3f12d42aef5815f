//! Keeps what must outlive a snapshot, by route: statistics (Prometheus counters must never go
//! backwards while their series exist) and control state (retry budgets, token buckets, shadow
//! copies in flight: a rebuilt snapshot must not hand out a fresh budget or burst). Only the
//! reloader touches it; each snapshot holds `Arc`s.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use super::budget::RetryBudget;
use super::ratelimit::RateState;
use super::shadow::InFlightCopies;
use crate::config::model::{RateKey, RateLimit};
use crate::stats::traffic::{FaultCounts, RateLimitCounts};
use crate::stats::{RequestCounters, ShadowStats, TargetStats};

/// A map that forgets entries not asked for since the last [`Kept::retain_seen`].
struct Kept<K, V> {
    map: HashMap<K, Arc<V>>,
    seen: HashSet<K>,
}

impl<K: Eq + Hash + Clone, V> Default for Kept<K, V> {
    fn default() -> Self {
        Kept {
            map: HashMap::new(),
            seen: HashSet::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Kept<K, V> {
    fn get_or(&mut self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        self.seen.insert(key.clone());
        Arc::clone(self.map.entry(key).or_insert_with(|| Arc::new(make())))
    }

    fn replace(&mut self, key: K, value: V) -> Arc<V> {
        self.seen.insert(key.clone());
        let v = Arc::new(value);
        self.map.insert(key, Arc::clone(&v));
        v
    }

    /// The entry for `key` if `keep` accepts it, marked as seen.
    fn get_if(&mut self, key: &K, keep: impl FnOnce(&V) -> bool) -> Option<Arc<V>> {
        let v = self.map.get(key).filter(|v| keep(v)).cloned()?;
        self.seen.insert(key.clone());
        Some(v)
    }

    fn retain_seen(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.map.retain(|k, _| seen.contains(k));
    }
}

type Name = Arc<str>;

pub(crate) struct Keeper {
    workers: usize,
    counters: Kept<(Name, Name, Name), RequestCounters>,
    targets: Kept<(Name, Name), TargetStats>,
    budgets: Kept<Name, RetryBudget>,
    rate_states: Kept<Name, RateState>,
    rate_counts: Kept<Name, RateLimitCounts>,
    fault_counts: Kept<(Name, Name), FaultCounts>,
    shadows: Kept<(Name, Name), ShadowStats>,
    copies: Kept<(Name, Name), InFlightCopies>,
}

impl Keeper {
    pub(crate) fn new(workers: usize) -> Self {
        Keeper {
            workers,
            counters: Kept::default(),
            targets: Kept::default(),
            budgets: Kept::default(),
            rate_states: Kept::default(),
            rate_counts: Kept::default(),
            fault_counts: Kept::default(),
            shadows: Kept::default(),
            copies: Kept::default(),
        }
    }

    /// Responses by class for (route, upstream, backend); backend "" when none was picked.
    pub(crate) fn counters(
        &mut self,
        route: &Name,
        upstream: &Name,
        backend: &str,
    ) -> Arc<RequestCounters> {
        let key = (Arc::clone(route), Arc::clone(upstream), Arc::from(backend));
        self.counters.get_or(key, RequestCounters::default)
    }

    pub(crate) fn target(&mut self, route: &Name, upstream: &Name) -> Arc<TargetStats> {
        let workers = self.workers;
        self.targets
            .get_or((Arc::clone(route), Arc::clone(upstream)), || {
                TargetStats::new(workers)
            })
    }

    /// The route's retry budget; a changed spec starts a fresh one.
    pub(crate) fn budget(
        &mut self,
        route: &Name,
        percent: f64,
        min_per_second: u32,
    ) -> Arc<RetryBudget> {
        let key = Arc::clone(route);
        match self
            .budgets
            .get_if(&key, |b| b.same_spec(percent, min_per_second))
        {
            Some(b) => b,
            None => self
                .budgets
                .replace(key, RetryBudget::new(percent, min_per_second)),
        }
    }

    /// The route's token buckets; a changed `rate_limit` starts them over.
    pub(crate) fn rate_state(&mut self, route: &Name, spec: &RateLimit) -> Arc<RateState> {
        let key = Arc::clone(route);
        match self.rate_states.get_if(&key, |s| s.same_spec(spec)) {
            Some(s) => s,
            None => {
                let keyed = spec.key != RateKey::Route;
                self.rate_states.replace(key, RateState::new(spec, keyed))
            }
        }
    }

    pub(crate) fn rate_counts(&mut self, route: &Name) -> Arc<RateLimitCounts> {
        self.rate_counts
            .get_or(Arc::clone(route), RateLimitCounts::default)
    }

    pub(crate) fn fault_counts(&mut self, route: &Name, upstream: &str) -> Arc<FaultCounts> {
        self.fault_counts.get_or(
            (Arc::clone(route), Arc::from(upstream)),
            FaultCounts::default,
        )
    }

    /// What a route's shadow copies to `upstream` came to (results, comparisons, mismatches):
    /// read by `/metrics`, `/shadow/{route}` and the rollout gate alike.
    pub(crate) fn shadow(&mut self, route: &Name, upstream: &Name) -> Arc<ShadowStats> {
        self.shadows.get_or(
            (Arc::clone(route), Arc::clone(upstream)),
            ShadowStats::default,
        )
    }

    /// The copies of a route's shadow to `upstream` in flight.
    pub(crate) fn copies(&mut self, route: &Name, upstream: &Name) -> Arc<InFlightCopies> {
        self.copies.get_or(
            (Arc::clone(route), Arc::clone(upstream)),
            InFlightCopies::default,
        )
    }

    /// Forgets every statistic not asked for since the last call (after a snapshot build).
    pub(crate) fn retain_seen(&mut self) {
        self.counters.retain_seen();
        self.targets.retain_seen();
        self.budgets.retain_seen();
        self.rate_states.retain_seen();
        self.rate_counts.retain_seen();
        self.fault_counts.retain_seen();
        self.shadows.retain_seen();
        self.copies.retain_seen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_survive_rebuilds_and_unused_ones_are_dropped() {
        let mut reg = Keeper::new(1);
        let (r, u) = (Arc::from("r"), Arc::from("u"));
        reg.counters(&r, &u, "b:1").record(200);
        let t = reg.target(&r, &u);
        reg.retain_seen();
        assert_eq!(reg.counters(&r, &u, "b:1").get(1), 1);
        assert!(Arc::ptr_eq(&reg.target(&r, &u), &t));
        reg.retain_seen();
        reg.retain_seen();
        assert_eq!(
            reg.counters(&r, &u, "b:1").get(1),
            0,
            "dropped after a build without it"
        );
    }

    #[test]
    fn a_changed_budget_spec_starts_over() {
        let mut reg = Keeper::new(1);
        let r = Arc::from("r");
        let a = reg.budget(&r, 20.0, 3);
        assert!(Arc::ptr_eq(&a, &reg.budget(&r, 20.0, 3)));
        assert!(!Arc::ptr_eq(&a, &reg.budget(&r, 10.0, 3)));
    }
}
