//! A route's shadow as one snapshot serves it: where copies go, which requests are copied
//! ([`ShadowRuntime::sampled`]), and the bound on copies in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::model::{Sample, Shadow};
use crate::stats::ShadowStats;

use super::upstream::UpstreamRuntime;

pub(crate) struct ShadowRuntime {
    pub(crate) route: Arc<str>,
    pub(crate) spec: Shadow,
    pub(crate) upstream: Arc<UpstreamRuntime>,
    /// What the copies came to (kept across reloads by route and shadow upstream).
    pub(crate) stats: Arc<ShadowStats>,
    /// Copies in flight (kept across reloads with the statistics).
    pub(crate) in_flight: Arc<InFlightCopies>,
    seq: AtomicU64,
}

impl ShadowRuntime {
    pub(crate) fn new(
        route: &Arc<str>,
        spec: &Shadow,
        upstream: &Arc<UpstreamRuntime>,
        stats: Arc<ShadowStats>,
        in_flight: Arc<InFlightCopies>,
    ) -> Arc<ShadowRuntime> {
        Arc::new(ShadowRuntime {
            route: Arc::clone(route),
            spec: spec.clone(),
            upstream: Arc::clone(upstream),
            stats,
            in_flight,
            // From a random point: every snapshot (each rollout step is one) builds this anew,
            // and a sequence restarting at 0 would shadow the first request after each.
            seq: AtomicU64::new(super::pick::fast_random()),
        })
    }

    /// Whether this request is copied: by its sticky key when the route samples by key and the
    /// request has one, else spread evenly. Costs one atomic add.
    pub(crate) fn sampled(&self, sticky: Option<&[u8]>) -> bool {
        let bp = self.spec.basis_points;
        match (self.spec.sample, sticky) {
            (Sample::Sticky, Some(key)) => sticky_sampled(key, bp),
            // Without a key (the client sent none), requests are spread like `random`.
            _ => spread_sampled(self.seq.fetch_add(1, Ordering::Relaxed), bp),
        }
    }
}

impl std::fmt::Debug for ShadowRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowRuntime")
            .field("route", &self.route)
            .field("upstream", &self.spec.upstream)
            .finish()
    }
}

/// The copies of one (route, shadow upstream) in flight, bounded by `max_in_flight`.
#[derive(Debug, Default)]
pub(crate) struct InFlightCopies(AtomicU32);

impl InFlightCopies {
    /// Takes one of `max` places; `None` (and nothing taken) when all are taken. The place is
    /// given back when the returned guard drops, however the copy ends.
    pub(crate) fn try_start(self: &Arc<Self>, max: u32) -> Option<Place> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(Arc::clone(self)))
    }

    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// One place among the copies in flight.
#[derive(Debug)]
pub(crate) struct Place(Arc<InFlightCopies>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// frac(√2) in 64-bit fixed point: consecutive multiples spread evenly over [0, 1) (a Weyl
/// sequence), and independently of the split's golden-ratio sequence, so the requests shadowed
/// are not tied to the upstream the split chose.
const SPREAD: u64 = 0x6A09_E667_F3BC_C909;

/// Whether the `seq`-th request of a route is shadowed at `basis_points` (hundredths of a
/// percent). Over any run of consecutive requests the share is within a few requests of exact.
pub(crate) fn spread_sampled(seq: u64, basis_points: u32) -> bool {
    ((u128::from(seq.wrapping_mul(SPREAD)) * 10_000) >> 64) < u128::from(basis_points)
}

/// Whether a sticky key is shadowed: the same key always gets the same answer, and raising the
/// percent only adds keys.
pub(crate) fn sticky_sampled(key: &[u8], basis_points: u32) -> bool {
    // FNV-1a from a basis of its own (not the split's hash), then splitmix64's finalizer.
    let mut h: u64 = 0x9ae1_6a3b_2f90_404f;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % 10_000 < u64::from(basis_points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_places_are_bounded_and_given_back() {
        let s = Arc::new(InFlightCopies::default());
        let a = s.try_start(2);
        let b = s.try_start(2);
        assert!(a.is_some() && b.is_some());
        assert!(s.try_start(2).is_none());
        assert_eq!(s.get(), 2);
        drop(a);
        assert!(s.try_start(2).is_some());
        drop(b);
    }

    #[test]
    fn spread_sampling_holds_its_percent_over_any_run() {
        for percent in [1u32, 10, 25, 33, 50, 90, 99] {
            for start in [0u64, 1, 12_345, u64::MAX - 2_500] {
                let n = (0..5_000u64)
                    .filter(|i| spread_sampled(start.wrapping_add(*i), percent * 100))
                    .count();
                let share = n as f64 / 50.0;
                assert!(
                    (share - f64::from(percent)).abs() <= 2.0,
                    "{percent}% from {start}: {share}%"
                );
            }
        }
        assert!((0..1000).all(|i| !spread_sampled(i, 0)));
        assert!((0..1000).all(|i| spread_sampled(i, 10_000)));
    }

    #[test]
    fn sticky_sampling_holds_per_user_and_overall() {
        for percent in [5u32, 20, 50] {
            let n = (0..5_000)
                .filter(|i| sticky_sampled(format!("user-{i}").as_bytes(), percent * 100))
                .count();
            let share = n as f64 / 50.0;
            assert!(
                (share - f64::from(percent)).abs() <= 2.0,
                "{percent}%: {share}%"
            );
        }
        // The same user always gets the same answer; a higher percent keeps everyone in.
        for i in 0..500 {
            let key = format!("u{i}");
            let at10 = sticky_sampled(key.as_bytes(), 1_000);
            assert_eq!(at10, sticky_sampled(key.as_bytes(), 1_000));
            assert!(!at10 || sticky_sampled(key.as_bytes(), 2_000));
        }
    }
}
