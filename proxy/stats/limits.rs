//! How often each listener limit turned a client away
//! (`switchyard_limit_rejections_total{listener,limit}`); kept across reloads by listener name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::prometheus::Exposition;

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

/// How often each [`Limit`] triggered on one listener; kept across reloads.
#[derive(Debug, Default)]
pub struct LimitCounters {
    by_limit: [AtomicU64; Limit::ALL.len()],
}

impl LimitCounters {
    pub(crate) fn hit(&self, limit: Limit) {
        self.by_limit[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, limit: Limit) -> u64 {
        self.by_limit[limit as usize].load(Ordering::Relaxed)
    }
}

/// Every listener's counters by name (read by `/metrics`; looked up only when a listener
/// starts or is renamed).
#[derive(Debug, Default)]
pub(crate) struct LimitStats {
    by_listener: Mutex<Vec<(String, Arc<LimitCounters>)>>,
}

impl LimitStats {
    pub(crate) fn counters(&self, listener: &str) -> Arc<LimitCounters> {
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = all.iter().find(|(n, _)| n == listener) {
            return Arc::clone(c);
        }
        let c = Arc::new(LimitCounters::default());
        all.push((listener.to_owned(), Arc::clone(&c)));
        c
    }

    pub(crate) fn render(&self, e: &mut Exposition) {
        e.family(
            "switchyard_limit_rejections_total",
            "counter",
            "Requests or connections turned away by a listener limit, by listener and limit.",
        );
        let all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        for (listener, c) in all.iter() {
            for l in Limit::ALL {
                e.sample(
                    "switchyard_limit_rejections_total",
                    &[("listener", listener), ("limit", l.as_str())],
                    c.get(l) as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_kept_by_listener_name() {
        let stats = LimitStats::default();
        stats.counters("public").hit(Limit::MaxConnections);
        stats.counters("public").hit(Limit::MaxConnections);
        assert_eq!(stats.counters("public").get(Limit::MaxConnections), 2);
        assert_eq!(stats.counters("other").get(Limit::MaxConnections), 0);
        let mut e = Exposition::default();
        stats.render(&mut e);
        let text = e.finish();
        assert!(text.contains(
            "switchyard_limit_rejections_total{listener=\"public\",limit=\"max_connections\"} 2"
        ));
    }
}
