//! Lock-free request counters, kept by the reloader across reloads so that Prometheus counters
//! never go backwards while their series exist.

use std::collections::HashMap;
use std::sync::Arc;
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

/// (route, upstream, backend); backend is empty when none could be picked.
pub type CounterKey = (Arc<str>, Arc<str>, Arc<str>);

/// Owns every [`RequestCounters`]; only the reloader touches it.
#[derive(Default)]
pub struct CounterRegistry {
    map: HashMap<CounterKey, Arc<RequestCounters>>,
    seen: Vec<CounterKey>,
}

impl CounterRegistry {
    pub fn get(
        &mut self,
        route: &Arc<str>,
        upstream: &Arc<str>,
        backend: &str,
    ) -> Arc<RequestCounters> {
        let key = (Arc::clone(route), Arc::clone(upstream), Arc::from(backend));
        self.seen.push(key.clone());
        Arc::clone(self.map.entry(key).or_default())
    }

    /// Forgets every counter not asked for since the last call.
    pub fn retain_seen(&mut self) {
        let seen: std::collections::HashSet<_> = self.seen.drain(..).collect();
        self.map.retain(|k, _| seen.contains(k));
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

    #[test]
    fn registry_keeps_counters_across_rebuilds_and_drops_unused_ones() {
        let mut reg = CounterRegistry::default();
        let (r, u) = (Arc::from("r"), Arc::from("u"));
        let a = reg.get(&r, &u, "b:1");
        a.record(200);
        reg.retain_seen();
        let again = reg.get(&r, &u, "b:1");
        assert_eq!(again.get(1), 1);
        reg.retain_seen();
        reg.retain_seen();
        assert_eq!(
            reg.get(&r, &u, "b:1").get(1),
            0,
            "dropped after a build without it"
        );
    }
}
