//! Per-route rate limits: token buckets, answered 429 with `Retry-After` when empty.
//!
//! The bucket math is GCRA (the generic cell rate algorithm), which is a token bucket written
//! as one number per bucket: the "theoretical arrival time" (TAT) at which the bucket would be
//! full again. Each request pushes it one interval (1 / rate) later; a request that would push
//! it more than `burst` intervals past now is refused. One number means a route-wide bucket is
//! a single atomic updated with compare-and-swap: exact (the configured rate, across every
//! worker, not a rate divided between workers) with no lock. Per-key buckets live in sharded
//! maps ([`RateState`]), so concurrent requests rarely share a lock.
//!
//! The buckets are kept by the route keeper across reloads: a reload, or a rollout step that
//! rebuilds the snapshot, must not hand every client a fresh burst. Memory is bounded: a
//! per-key state keeps at most `max_keys` buckets over [`SHARDS`] shards, each behind its own
//! short-held lock (no lock shared by all requests); a route-wide bucket is a single atomic.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::HeaderMap;
use tokio::time::Instant;

use crate::config::model::{RateKey, RateLimit};
use crate::stats::traffic::RateLimitCounts;

/// Shards of a per-key state: enough that two workers rarely meet on one lock.
pub(crate) const SHARDS: usize = 64;

const NANOS: u64 = 1_000_000_000;

/// A bucket's rate and depth, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Time one request's token takes to come back: 1 / rate.
    interval: u64,
    /// `burst` intervals: how far ahead of now the TAT may run.
    capacity: u64,
}

impl Gcra {
    pub(crate) fn new(requests_per_second: f64, burst: u32) -> Gcra {
        let interval = (NANOS as f64 / requests_per_second)
            .round()
            .clamp(1.0, u64::MAX as f64);
        let interval = interval as u64;
        Gcra {
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// One request at `now` against a bucket whose TAT is `tat` (0: never used, full):
    /// `Ok(new tat)` if a token was there, else `Err(ns until one is)`.
    pub(crate) fn decide(self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.capacity {
            Ok(next)
        } else {
            Err(ahead - self.capacity)
        }
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1: "0" would invite a busy loop).
pub(crate) fn retry_after_secs(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(NANOS).max(1)
}

/// A route's limit as the request path uses it.
pub(crate) struct RouteRateLimit {
    gcra: Gcra,
    state: Arc<RateState>,
    counts: Arc<RateLimitCounts>,
}

impl RouteRateLimit {
    pub(crate) fn new(
        spec: &RateLimit,
        state: Arc<RateState>,
        counts: Arc<RateLimitCounts>,
    ) -> Self {
        RouteRateLimit {
            gcra: Gcra::new(spec.requests_per_second, spec.burst),
            state,
            counts,
        }
    }

    pub(crate) fn counts(&self) -> &RateLimitCounts {
        &self.counts
    }

    pub(crate) fn state(&self) -> &RateState {
        &self.state
    }

    /// Takes a token for this request, or says how long until one is there.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        route: &str,
    ) -> Result<(), Limited> {
        let ip_bytes;
        let key: &[u8] = match &self.state.spec().key {
            RateKey::Route => b"",
            RateKey::ClientIp => {
                ip_bytes = ip_key(peer);
                &ip_bytes
            }
            // Requests without the header share one bucket (they are not exempt).
            RateKey::Header(name) => headers.get(name).map_or(b"", |v| v.as_bytes()),
        };
        let now = self.state.now_ns(Instant::now());
        let gcra = self.gcra;
        match self.state.update(key, now, |tat| gcra.decide(tat, now)) {
            Ok(()) => Ok(()),
            Err(wait) => {
                self.counts.limited();
                let secs = retry_after_secs(wait);
                tracing::debug!(route, retry_after = secs, "rate limited");
                Err(Limited { retry_after: secs })
            }
        }
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    /// Whole seconds until a token is back.
    pub(crate) retry_after: u64,
}

/// An address as 16 bytes (IPv4 mapped), without allocating.
fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A route's buckets.
pub(crate) struct RateState {
    spec: RateLimit,
    base: Instant,
    store: Store,
    /// Buckets evicted while not yet full (their keys start over with a full burst).
    evicted_active: AtomicU64,
}

enum Store {
    Single(AtomicU64),
    Keyed {
        hasher: RandomState,
        shards: Box<[Mutex<HashMap<u64, u64>>]>,
        per_shard: usize,
    },
}

impl RateState {
    pub(crate) fn new(spec: &RateLimit, keyed: bool) -> RateState {
        let store = if keyed {
            Store::Keyed {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                per_shard: spec.max_keys.div_ceil(SHARDS).max(1),
            }
        } else {
            Store::Single(AtomicU64::new(0))
        };
        RateState {
            spec: spec.clone(),
            base: Instant::now(),
            store,
            evicted_active: AtomicU64::new(0),
        }
    }

    pub(crate) fn same_spec(&self, spec: &RateLimit) -> bool {
        &self.spec == spec
    }

    pub(crate) fn spec(&self) -> &RateLimit {
        &self.spec
    }

    /// Nanoseconds since this state was made.
    fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `decide(tat)` on the bucket of `key` (ignored for a route-wide state) and stores
    /// the new time on `Ok`. A bucket never seen is full: its time is 0. `Err` passes through.
    fn update(
        &self,
        key: &[u8],
        now_ns: u64,
        decide: impl Fn(u64) -> Result<u64, u64>,
    ) -> Result<(), u64> {
        match &self.store {
            Store::Single(tat) => {
                let mut cur = tat.load(Ordering::Relaxed);
                loop {
                    let next = decide(cur)?;
                    match tat.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
                    {
                        Ok(_) => return Ok(()),
                        Err(seen) => cur = seen,
                    }
                }
            }
            Store::Keyed {
                hasher,
                shards,
                per_shard,
            } => {
                // Keys are stored as a keyed 64-bit hash: bounded size whatever the header's,
                // and clients cannot aim collisions without the per-process key.
                let h = hasher.hash_one(key);
                let shard = &shards[(h as usize) % shards.len()];
                let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
                let cur = map.get(&h).copied().unwrap_or(0);
                let next = decide(cur)?;
                if map.len() >= *per_shard && !map.contains_key(&h) {
                    self.make_room(&mut map, *per_shard, now_ns);
                }
                map.insert(h, next);
                Ok(())
            }
        }
    }

    /// Frees a slot: full buckets first (forgetting one changes nothing: a new bucket is full),
    /// else the bucket nearest to full.
    fn make_room(&self, map: &mut HashMap<u64, u64>, cap: usize, now_ns: u64) {
        map.retain(|_, tat| *tat > now_ns);
        if map.len() < cap {
            return;
        }
        if let Some(k) = map.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k) {
            map.remove(&k);
            self.evicted_active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Buckets evicted while not yet full (their keys started over with a full burst).
    pub(crate) fn evicted_before_full(&self) -> u64 {
        self.evicted_active.load(Ordering::Relaxed)
    }

    /// Buckets held now (for tests and status).
    pub(crate) fn keys(&self) -> usize {
        match &self.store {
            Store::Single(_) => 1,
            Store::Keyed { shards, .. } => shards
                .iter()
                .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_full_bucket_lets_burst_through_then_refills_at_the_rate() {
        let g = Gcra::new(10.0, 3); // a token every 100 ms, 3 deep
        let mut tat = 0;
        let now = 5_000 * MS;
        for _ in 0..3 {
            tat = g.decide(tat, now).expect("within the burst");
        }
        let wait = g.decide(tat, now).unwrap_err();
        assert_eq!(wait, 100 * MS, "the next token is one interval away");
        assert_eq!(g.decide(tat, now + 99 * MS), Err(MS));
        tat = g.decide(tat, now + 100 * MS).expect("one token back");
        assert!(g.decide(tat, now + 100 * MS).is_err());
        // Idle for long: full again, but never more than the burst.
        let later = now + 60_000 * MS;
        for _ in 0..3 {
            tat = g.decide(tat, later).unwrap();
        }
        assert!(g.decide(tat, later).is_err());
    }

    #[test]
    fn sustained_traffic_gets_exactly_the_rate() {
        let g = Gcra::new(50.0, 5);
        let (mut tat, mut passed) = (0u64, 0u32);
        // A request every millisecond for 10 s: 500 + the 5 of the burst.
        for ms in 0..10_000u64 {
            if let Ok(t) = g.decide(tat, ms * MS) {
                tat = t;
                passed += 1;
            }
        }
        assert_eq!(passed, 500 + 5 - 1, "{passed}");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(NANOS), 1);
        assert_eq!(retry_after_secs(NANOS + 1), 2);
        assert_eq!(retry_after_secs(0), 1);
        // 0.5 requests per second: a refused request waits up to 2 s.
        let g = Gcra::new(0.5, 1);
        let tat = g.decide(0, NANOS).unwrap();
        assert_eq!(retry_after_secs(g.decide(tat, NANOS).unwrap_err()), 2);
    }

    fn spec(key: RateKey, max_keys: usize) -> RateLimit {
        RateLimit {
            requests_per_second: 1.0,
            burst: 2,
            key,
            max_keys,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets_and_the_clock_refills_them() {
        let s = spec(RateKey::ClientIp, 100);
        let limit = RouteRateLimit::new(&s, Arc::new(RateState::new(&s, true)), Arc::default());
        let h = HeaderMap::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limit.admit(&h, a, "r").is_ok());
        assert!(limit.admit(&h, a, "r").is_ok());
        let refused = limit.admit(&h, a, "r").unwrap_err();
        assert_eq!(refused.retry_after, 1);
        assert!(
            limit.admit(&h, b, "r").is_ok(),
            "another client is not limited"
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(
            limit.admit(&h, a, "r").is_ok(),
            "a token came back after 1 s"
        );
        assert!(limit.admit(&h, a, "r").is_err());
        assert_eq!(limit.counts().read(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_memory_stays_within_max_keys() {
        let s = spec(RateKey::Header(http::HeaderName::from_static("x-k")), 128);
        let state = Arc::new(RateState::new(&s, true));
        let limit = RouteRateLimit::new(&s, Arc::clone(&state), Arc::default());
        for i in 0..10_000u32 {
            let mut h = HeaderMap::new();
            h.insert("x-k", http::HeaderValue::from(i));
            assert!(limit.admit(&h, IpAddr::from([127, 0, 0, 1]), "r").is_ok());
        }
        let bound = 128usize.div_ceil(SHARDS) * SHARDS;
        assert!(state.keys() <= bound, "{} buckets", state.keys());
    }
}
