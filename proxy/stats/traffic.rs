//! The state behind a route's `rate_limit` (its token buckets) and what rate limits and faults
//! did (counters), all kept by the registry across reloads: a reload, or a rollout step that
//! rebuilds the snapshot, must not hand every client a fresh burst.
//!
//! A bucket is stored as one number, GCRA's "theoretical arrival time" in nanoseconds since the
//! state was made (the math is in `http::ratelimit`). Memory is bounded: a per-key state keeps
//! at most `max_keys` buckets over [`SHARDS`] shards, each behind its own short-held lock (no
//! lock shared by all requests); a route-wide bucket is a single atomic.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::config::model::RateLimit;

/// Shards of a per-key state: enough that two workers rarely meet on one lock.
pub const SHARDS: usize = 64;

/// Requests a route's limit turned away.
#[derive(Debug, Default)]
pub struct RateLimitCounts {
    pub limited: AtomicU64,
}

/// Faults injected on one (route, upstream).
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub delayed: AtomicU64,
    pub aborted: AtomicU64,
}

/// A route's buckets.
pub struct RateState {
    spec: RateLimit,
    base: Instant,
    store: Store,
    /// Buckets evicted while not yet full (their keys start over with a full burst).
    pub evicted_active: AtomicU64,
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
    pub fn new(spec: &RateLimit, keyed: bool) -> RateState {
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

    pub fn same_spec(&self, spec: &RateLimit) -> bool {
        &self.spec == spec
    }

    pub fn spec(&self) -> &RateLimit {
        &self.spec
    }

    /// Nanoseconds since this state was made.
    pub fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `decide(tat)` on the bucket of `key` (ignored for a route-wide state) and stores
    /// the new time on `Ok`. A bucket never seen is full: its time is 0. `Err` passes through.
    pub fn update(
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

    /// Buckets held now (for tests and status).
    pub fn keys(&self) -> usize {
        match &self.store {
            Store::Single(_) => 1,
            Store::Keyed { shards, .. } => shards
                .iter()
                .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
                .sum(),
        }
    }
}
