//! Per-route rate limits: token buckets, answered 429 with `Retry-After` when empty.
//!
//! The bucket math is GCRA (the generic cell rate algorithm), which is a token bucket written
//! as one number per bucket: the "theoretical arrival time" (TAT) at which the bucket would be
//! full again. Each request pushes it one interval (1 / rate) later; a request that would push
//! it more than `burst` intervals past now is refused. One number means a route-wide bucket is
//! a single atomic updated with compare-and-swap: exact (the configured rate, across every
//! worker, not a rate divided between workers) with no lock. Per-key buckets live in sharded
//! maps (see `stats::traffic`), so concurrent requests rarely share a lock.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::handler::{ProxyBody, local_response};
use crate::config::model::{RateKey, RateLimit};
use crate::stats::traffic::{RateLimitCounts, RateState};

const NANOS: u64 = 1_000_000_000;

/// A bucket's rate and depth, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one request's token takes to come back: 1 / rate.
    interval: u64,
    /// `burst` intervals: how far ahead of now the TAT may run.
    capacity: u64,
}

impl Gcra {
    pub fn new(requests_per_second: f64, burst: u32) -> Gcra {
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
    pub fn decide(self, tat: u64, now: u64) -> Result<u64, u64> {
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
pub fn retry_after_secs(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(NANOS).max(1)
}

/// A route's limit as the request path uses it.
pub struct RouteRateLimit {
    gcra: Gcra,
    state: Arc<RateState>,
    counts: Arc<RateLimitCounts>,
}

impl RouteRateLimit {
    pub fn new(spec: &RateLimit, state: Arc<RateState>, counts: Arc<RateLimitCounts>) -> Self {
        RouteRateLimit {
            gcra: Gcra::new(spec.requests_per_second, spec.burst),
            state,
            counts,
        }
    }

    pub fn counts(&self) -> &RateLimitCounts {
        &self.counts
    }

    pub fn state(&self) -> &RateState {
        &self.state
    }

    /// Takes a token for this request, or says how long until one is there.
    pub fn admit(&self, headers: &HeaderMap, peer: IpAddr, route: &str) -> Result<(), Limited> {
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
                self.counts.limited.fetch_add(1, Ordering::Relaxed);
                let secs = retry_after_secs(wait);
                tracing::debug!(route, retry_after = secs, "rate limited");
                Err(Limited { retry_after: secs })
            }
        }
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a token is back.
    pub retry_after: u64,
}

impl Limited {
    /// 429 with `Retry-After`.
    pub fn response(self) -> Response<ProxyBody> {
        let mut resp = local_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests; retry after the time in Retry-After",
        );
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(self.retry_after),
        );
        resp
    }
}

/// An address as 16 bytes (IPv4 mapped), without allocating.
fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
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
        let refused = limit.admit(&h, a, "r").unwrap_err().response();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "1");
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
        assert_eq!(limit.counts().limited.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_memory_stays_within_max_keys() {
        let s = spec(RateKey::Header(http::HeaderName::from_static("x-k")), 128);
        let state = Arc::new(RateState::new(&s, true));
        let limit = RouteRateLimit::new(&s, Arc::clone(&state), Arc::default());
        for i in 0..10_000u32 {
            let mut h = HeaderMap::new();
            h.insert("x-k", HeaderValue::from(i));
            assert!(limit.admit(&h, IpAddr::from([127, 0, 0, 1]), "r").is_ok());
        }
        let bound =
            128usize.div_ceil(crate::stats::traffic::SHARDS) * crate::stats::traffic::SHARDS;
        assert!(state.keys() <= bound, "{} buckets", state.keys());
    }
}
