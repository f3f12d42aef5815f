//! What a route's shadow copies to one upstream came to: results, mismatches by kind, the
//! copies in flight (the `max_in_flight` bound) and the last mismatches in detail. Kept across
//! reloads by (route, shadow upstream); the rollout-facing rate is [`super::ShadowStats`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What became of a request chosen for shadowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowResult {
    /// The shadow answered below 500.
    Success,
    ServerError,
    Timeout,
    /// Connect failure or a broken connection.
    Failed,
    /// Every shadow backend was out (unhealthy or its breaker open).
    NoBackend,
    /// The request body was larger than `max_body_bytes`.
    SkippedBody,
    /// `max_in_flight` copies were already outstanding.
    SkippedInFlight,
    /// The method is not one of `methods`.
    SkippedMethod,
    /// The request body was not read to its end (the client left, or the primary failed
    /// before reading it), so there was nothing whole to copy.
    Abandoned,
}

impl ShadowResult {
    pub const ALL: [ShadowResult; 9] = [
        ShadowResult::Success,
        ShadowResult::ServerError,
        ShadowResult::Timeout,
        ShadowResult::Failed,
        ShadowResult::NoBackend,
        ShadowResult::SkippedBody,
        ShadowResult::SkippedInFlight,
        ShadowResult::SkippedMethod,
        ShadowResult::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowResult::Success => "success",
            ShadowResult::ServerError => "5xx",
            ShadowResult::Timeout => "timeout",
            ShadowResult::Failed => "failed",
            ShadowResult::NoBackend => "no_backend",
            ShadowResult::SkippedBody => "skipped_body_too_large",
            ShadowResult::SkippedInFlight => "skipped_in_flight",
            ShadowResult::SkippedMethod => "skipped_method",
            ShadowResult::Abandoned => "abandoned",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The mismatches kept for `GET /shadow/{route}`.
pub const RECENT_MISMATCHES: usize = 50;

/// One mismatch as the admin API shows it (sensitive headers already redacted).
#[derive(Debug, Clone)]
pub struct MismatchRecord {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `GET /path?query`.
    pub request: String,
    pub request_headers: Vec<(String, String)>,
    /// `status`, `header` or `body`.
    pub kind: &'static str,
    pub primary_status: u16,
    pub shadow_status: u16,
    /// The first difference: a JSON pointer, `byte N`, or the header's name.
    pub difference: String,
    /// The differing header's values, primary then shadow, for a header mismatch.
    pub header_values: Option<(Option<String>, Option<String>)>,
}

#[derive(Debug, Default)]
pub struct MirrorStats {
    results: [AtomicU64; 9],
    mismatches: [AtomicU64; 3],
    in_flight: AtomicU32,
    recent: Mutex<VecDeque<MismatchRecord>>,
}

impl MirrorStats {
    pub fn count(&self, r: ShadowResult) {
        self.results[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn result(&self, r: ShadowResult) -> u64 {
        self.results[r.index()].load(Ordering::Relaxed)
    }

    /// Takes one of `max` in-flight places; `false` (and nothing taken) when all are taken.
    pub fn try_start(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a place taken by [`MirrorStats::try_start`].
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// `kind` is the index of `status`, `header`, `body` (as [`crate::http::compare::Kind`]).
    pub fn mismatch(&self, kind: usize, record: MismatchRecord) {
        if let Some(c) = self.mismatches.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_MISMATCHES {
                recent.pop_front();
            }
            recent.push_back(record);
        }
    }

    pub fn mismatches(&self, kind: usize) -> u64 {
        self.mismatches
            .get(kind)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The last mismatches, newest first.
    pub fn recent(&self) -> Vec<MismatchRecord> {
        self.recent
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_places_are_bounded_and_given_back() {
        let s = MirrorStats::default();
        assert!(s.try_start(2));
        assert!(s.try_start(2));
        assert!(!s.try_start(2));
        assert_eq!(s.in_flight(), 2);
        s.end();
        assert!(s.try_start(2));
    }

    #[test]
    fn only_the_last_mismatches_are_kept() {
        let s = MirrorStats::default();
        for i in 0..(RECENT_MISMATCHES as u16 + 5) {
            s.mismatch(
                2,
                MismatchRecord {
                    at_ms: 0,
                    request: format!("GET /{i}"),
                    request_headers: vec![],
                    kind: "body",
                    primary_status: 200,
                    shadow_status: 200,
                    difference: "/a".into(),
                    header_values: None,
                },
            );
        }
        let recent = s.recent();
        assert_eq!(recent.len(), RECENT_MISMATCHES);
        assert_eq!(recent[0].request, format!("GET /{}", RECENT_MISMATCHES + 4));
        assert_eq!(s.mismatches(2), RECENT_MISMATCHES as u64 + 5);
    }
}
