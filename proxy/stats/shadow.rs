//! What a route's shadow copies to one upstream came to: results, comparisons and mismatches by
//! kind, and the last mismatches in detail. Kept across reloads by (route, shadow upstream); one
//! statistic feeds `/metrics`, `/shadow/{route}` and the rollout gate on the mismatch rate.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What became of a request chosen for shadowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShadowResult {
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
    pub(crate) const ALL: [ShadowResult; 9] = [
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

    pub(crate) fn as_str(self) -> &'static str {
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

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How a shadow response first differed from its primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MismatchKind {
    Status,
    Header,
    Body,
}

impl MismatchKind {
    pub(crate) const ALL: [MismatchKind; 3] = [
        MismatchKind::Status,
        MismatchKind::Header,
        MismatchKind::Body,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MismatchKind::Status => "status",
            MismatchKind::Header => "header",
            MismatchKind::Body => "body",
        }
    }
}

/// The mismatches kept for `GET /shadow/{route}`.
pub(crate) const RECENT_MISMATCHES: usize = 50;

/// One mismatch as the admin API shows it (sensitive headers already redacted).
#[derive(Debug, Clone)]
pub(crate) struct MismatchRecord {
    /// Milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// `GET /path?query`.
    pub(crate) request: String,
    pub(crate) request_headers: Vec<(String, String)>,
    /// `status`, `header` or `body`.
    pub(crate) kind: &'static str,
    pub(crate) primary_status: u16,
    pub(crate) shadow_status: u16,
    /// The first difference: a JSON pointer, `byte N`, or the header's name.
    pub(crate) difference: String,
    /// The differing header's values, primary then shadow, for a header mismatch.
    pub(crate) header_values: Option<(Option<String>, Option<String>)>,
}

#[derive(Debug, Default)]
pub(crate) struct ShadowStats {
    results: [AtomicU64; ShadowResult::ALL.len()],
    /// Shadow responses compared with their primary's.
    compared: AtomicU64,
    /// Of those, the ones that differed, by [`MismatchKind`].
    mismatches: [AtomicU64; MismatchKind::ALL.len()],
    recent: Mutex<VecDeque<MismatchRecord>>,
}

/// A reading of the comparisons, for rates over a stretch of time (a rollout step).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    pub compared: u64,
    pub mismatched: u64,
}

impl ShadowCounts {
    /// The counts between an earlier reading and this one.
    pub(crate) fn since(self, earlier: ShadowCounts) -> ShadowCounts {
        ShadowCounts {
            compared: self.compared.saturating_sub(earlier.compared),
            mismatched: self.mismatched.saturating_sub(earlier.mismatched),
        }
    }

    /// Mismatched share of compared, `None` before anything was compared.
    pub(crate) fn mismatch_rate(self) -> Option<f64> {
        (self.compared > 0).then(|| self.mismatched as f64 / self.compared as f64)
    }
}

impl ShadowStats {
    /// What became of one request chosen for shadowing.
    pub(crate) fn count(&self, r: ShadowResult) {
        self.results[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn result(&self, r: ShadowResult) -> u64 {
        self.results[r.index()].load(Ordering::Relaxed)
    }

    /// A shadow response compared equal to its primary's.
    pub(crate) fn matched(&self) {
        self.compared.fetch_add(1, Ordering::Relaxed);
    }

    /// A shadow response that differed from its primary's; the newest are kept for the admin
    /// API.
    pub(crate) fn mismatched(&self, kind: MismatchKind, record: MismatchRecord) {
        self.mismatches[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.compared.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_MISMATCHES {
                recent.pop_front();
            }
            recent.push_back(record);
        }
    }

    pub(crate) fn mismatches(&self, kind: MismatchKind) -> u64 {
        self.mismatches[kind as usize].load(Ordering::Relaxed)
    }

    /// Compared and mismatched so far.
    pub(crate) fn read(&self) -> ShadowCounts {
        ShadowCounts {
            compared: self.compared.load(Ordering::Relaxed),
            mismatched: MismatchKind::ALL.iter().map(|k| self.mismatches(*k)).sum(),
        }
    }

    /// The last mismatches, newest first.
    pub(crate) fn recent(&self) -> Vec<MismatchRecord> {
        self.recent
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u16) -> MismatchRecord {
        MismatchRecord {
            at_ms: 0,
            request: format!("GET /{i}"),
            request_headers: vec![],
            kind: "body",
            primary_status: 200,
            shadow_status: 200,
            difference: "/a".into(),
            header_values: None,
        }
    }

    #[test]
    fn only_the_last_mismatches_are_kept() {
        let s = ShadowStats::default();
        for i in 0..(RECENT_MISMATCHES as u16 + 5) {
            s.mismatched(MismatchKind::Body, record(i));
        }
        let recent = s.recent();
        assert_eq!(recent.len(), RECENT_MISMATCHES);
        assert_eq!(recent[0].request, format!("GET /{}", RECENT_MISMATCHES + 4));
        assert_eq!(
            s.mismatches(MismatchKind::Body),
            RECENT_MISMATCHES as u64 + 5
        );
    }

    #[test]
    fn readings_diff_into_a_rate() {
        let s = ShadowStats::default();
        assert_eq!(s.read().mismatch_rate(), None);
        s.matched();
        let start = s.read();
        s.mismatched(MismatchKind::Status, record(1));
        s.matched();
        let step = s.read().since(start);
        assert_eq!(
            step,
            ShadowCounts {
                compared: 2,
                mismatched: 1
            }
        );
        assert_eq!(step.mismatch_rate(), Some(0.5));
    }
}
