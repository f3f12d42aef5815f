//! What each listener's limits and its accept loops turned away or met
//! (`switchyard_limit_rejections_total{listener,limit}`, `switchyard_accept_errors_total`, the
//! accept side of `switchyard_local_resource_errors_total`); kept across reloads by listener
//! name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::counters::Shortage;

/// At most one "accept failed" line per listener per this long.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Each way a limit can turn a client away, with its `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Request head too large or too many headers (431).
    RequestHeaders,
    /// No whole request head in time, first or next on a kept-alive connection (closed).
    HeaderReadTimeout,
    /// An HTTP/2 connection without streams for too long (closed).
    IdleTimeout,
    /// The body came slower than the minimum rate (408, closed).
    MinRequestBodyRate,
    /// The body was larger than allowed (413).
    MaxRequestBodyBytes,
    /// The listener had its maximum of connections (accepted and closed at once).
    MaxConnections,
    /// A request hyper could not parse, or one the smuggling checks refused (400).
    MalformedRequest,
    /// A header name with an underscore, refused or dropped.
    HeaderWithUnderscore,
    /// An HTTP/2 client flooding resets or CONTINUATION frames (GOAWAY `ENHANCE_YOUR_CALM`).
    Http2Flood,
}

impl Limit {
    pub(crate) const ALL: [Limit; 9] = [
        Limit::RequestHeaders,
        Limit::HeaderReadTimeout,
        Limit::IdleTimeout,
        Limit::MinRequestBodyRate,
        Limit::MaxRequestBodyBytes,
        Limit::MaxConnections,
        Limit::MalformedRequest,
        Limit::HeaderWithUnderscore,
        Limit::Http2Flood,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limit::RequestHeaders => "request_headers",
            Limit::HeaderReadTimeout => "header_read_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::MinRequestBodyRate => "min_request_body_rate",
            Limit::MaxRequestBodyBytes => "max_request_body_bytes",
            Limit::MaxConnections => "max_connections",
            Limit::MalformedRequest => "malformed_request",
            Limit::HeaderWithUnderscore => "headers_with_underscores",
            Limit::Http2Flood => "http2_flood",
        }
    }
}

/// How often each [`Limit`] triggered on one listener, and how often accepting failed; kept
/// across reloads.
#[derive(Debug, Default)]
pub struct LimitCounters {
    by_limit: [AtomicU64; Limit::ALL.len()],
    /// The listener's accept failures (see `server::accept`).
    pub accept: Arc<AcceptStats>,
}

impl LimitCounters {
    pub fn hit(&self, limit: Limit) {
        self.by_limit[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.by_limit[limit as usize].load(Ordering::Relaxed)
    }
}

/// Every listener's counters by name (read by `/metrics`; looked up only when a listener
/// starts or is renamed).
#[derive(Debug, Default)]
pub struct LimitStats {
    by_listener: Mutex<Vec<(String, Arc<LimitCounters>)>>,
}

impl LimitStats {
    pub fn counters(&self, listener: &str) -> Arc<LimitCounters> {
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = all.iter().find(|(n, _)| n == listener) {
            return Arc::clone(c);
        }
        let c = Arc::new(LimitCounters::default());
        all.push((listener.to_owned(), Arc::clone(&c)));
        c
    }

    /// Every listener's counters, in the order the listeners first started.
    pub fn all(&self) -> Vec<(String, Arc<LimitCounters>)> {
        let all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        all.clone()
    }
}

/// Whether to log a failure now: one line per [`LOG_EVERY`], carrying the count of those not
/// logged since the previous line. Shared by the accept loops of one listener.
#[derive(Debug, Default)]
pub struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(n)`: log now, saying `n` failures went unlogged before this one.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// One listener's accept failures: the count (`switchyard_accept_errors_total`), those that
/// were the process's own shortage (`switchyard_local_resource_errors_total{op="accept"}`), and
/// the gate that keeps its log lines sparse, shared by the listener's accept loops (one per
/// worker).
#[derive(Debug, Default)]
pub struct AcceptStats {
    errors: AtomicU64,
    shortages: [AtomicU64; Shortage::ALL.len()],
    /// Taken only when accept fails.
    log: Mutex<LogGate>,
}

impl AcceptStats {
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Failures of one kind of shortage so far.
    pub(crate) fn shortages(&self, s: Shortage) -> u64 {
        self.shortages[s as usize].load(Ordering::Relaxed)
    }

    /// One accept failed with `e`.
    pub(crate) fn failed(&self, e: &std::io::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = Shortage::of(e) {
            self.shortages[s as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn admit_log(&self, now: Instant) -> Option<u64> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_are_kept_by_listener_name() {
        let stats = LimitStats::default();
        stats.counters("public").hit(Limit::MaxConnections);
        stats.counters("public").hit(Limit::MaxConnections);
        assert_eq!(stats.counters("public").get(Limit::MaxConnections), 2);
        assert_eq!(stats.counters("other").get(Limit::MaxConnections), 0);
        let all = stats.all();
        assert_eq!(
            all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["public", "other"]
        );
        assert_eq!(all[0].1.get(Limit::MaxConnections), 2);
    }

    #[test]
    fn one_line_a_second_with_the_count_of_those_left_out() {
        let mut gate = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.admit(t0), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(gate.admit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(gate.admit(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(gate.admit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(gate.admit(t0 + Duration::from_millis(2100)), Some(1));
    }

    #[test]
    fn the_process_running_out_is_counted_apart() {
        let a = AcceptStats::default();
        a.failed(&std::io::Error::from_raw_os_error(24));
        a.failed(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted));
        assert_eq!(a.errors(), 2);
        assert_eq!(a.shortages(Shortage::ProcessFiles), 1);
    }
}
