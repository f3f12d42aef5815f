//! New trace and span ids, and the sampling decision a new trace gets from its id.
//!
//! Ids come from a per-thread generator (splitmix64: no lock, no syscall, a few instructions a
//! draw) seeded from the process's random hasher keys, which the OS provides: ids from two
//! replicas, or from two threads of one, do not collide by construction of their seeds.
//!
//! Sampling follows OpenTelemetry's consistent probability sampling: the last 56 bits of the
//! trace id are its randomness, and a trace is sampled at ratio `p` when they are at least
//! `(1 - p) * 2^56`. Every replica (and every service using the same rule) then makes the same
//! decision for the same trace, and a higher ratio only adds traces.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};

use super::context::{SpanId, TraceId};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // RandomState's keys come from the OS once per process and step for each new state; the
    // thread's id keeps two threads apart even if they drew the same keys.
    RandomState::new().hash_one(std::thread::current().id())
}

/// One splitmix64 draw from this thread's generator.
fn next() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

pub fn trace_id() -> TraceId {
    loop {
        let (a, b) = (next(), next());
        if a | b != 0 {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&a.to_be_bytes());
            id[8..].copy_from_slice(&b.to_be_bytes());
            return TraceId(id);
        }
    }
}

pub fn span_id() -> SpanId {
    loop {
        let a = next();
        if a != 0 {
            return SpanId(a.to_be_bytes());
        }
    }
}

/// Whether a new trace with this id is sampled, at the threshold the config computed from its
/// ratio ([`crate::config::tracing::threshold`]).
pub fn sampled(id: &TraceId, threshold: Option<u64>) -> bool {
    let Some(t) = threshold else { return false };
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&id.0[9..]);
    u64::from_be_bytes(low) >= t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tracing::threshold;

    #[test]
    fn ids_are_never_zero_and_rarely_equal() {
        let traces: std::collections::HashSet<[u8; 16]> =
            (0..10_000).map(|_| trace_id().0).collect();
        let spans: std::collections::HashSet<[u8; 8]> = (0..10_000).map(|_| span_id().0).collect();
        assert_eq!(traces.len(), 10_000);
        assert_eq!(spans.len(), 10_000);
        assert!(!traces.contains(&[0; 16]) && !spans.contains(&[0; 8]));
    }

    #[test]
    fn threads_draw_different_ids() {
        let a = std::thread::spawn(|| (0..100).map(|_| span_id().0).collect::<Vec<_>>());
        let b = std::thread::spawn(|| (0..100).map(|_| span_id().0).collect::<Vec<_>>());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a.iter().all(|x| !b.contains(x)));
    }

    #[test]
    fn the_ratio_is_the_share_sampled() {
        let n = 20_000;
        for ratio in [0.01, 0.1, 0.5, 0.9] {
            let t = threshold(ratio);
            let hits = (0..n).filter(|_| sampled(&trace_id(), t)).count();
            let share = hits as f64 / n as f64;
            assert!(
                (share - ratio).abs() < 0.02,
                "ratio {ratio}: sampled {share}"
            );
        }
        assert!((0..1000).all(|_| !sampled(&trace_id(), threshold(0.0))));
        assert!((0..1000).all(|_| sampled(&trace_id(), threshold(1.0))));
        assert_eq!(threshold(f64::NAN), None);
        assert_eq!(threshold(7.0), Some(0));
    }

    #[test]
    fn the_decision_is_the_ids_and_grows_with_the_ratio() {
        // The last 7 bytes decide: 0x80.. is in the upper half, sampled at 50 % and above.
        let mut id = [0u8; 16];
        id[9] = 0x80;
        let id = TraceId(id);
        assert!(sampled(&id, threshold(0.5)));
        assert!(!sampled(&id, threshold(0.49)));
        for _ in 0..1000 {
            let id = trace_id();
            if sampled(&id, threshold(0.2)) {
                assert!(sampled(&id, threshold(0.3)));
            }
        }
    }
}
