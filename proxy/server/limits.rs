//! A listener's limits as the serving code uses them: the hyper connection builder they shape,
//! and the counters that say how often each limit triggered
//! (`switchyard_limit_rejections_total{listener,limit}`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use super::accept::AcceptStats;
use crate::config::limits::Limits;

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
    pub const ALL: [Limit; 9] = [
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

    pub fn as_str(self) -> &'static str {
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
    /// The listener's accept failures (see [`super::accept`]).
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

/// One listener's limits, ready to serve with.
pub struct ListenerLimits {
    pub spec: Limits,
    pub counters: Arc<LimitCounters>,
    pub builder: auto::Builder<TokioExecutor>,
}

impl ListenerLimits {
    pub fn new(spec: Limits, counters: Arc<LimitCounters>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Our own watchdog covers this (see `conn::serve`); hyper's costs a timer per
            // request and covers only the first request of a connection.
            .header_read_timeout(None)
            .max_buf_size(spec.max_request_header_bytes)
            .max_headers(spec.max_request_headers)
            .keep_alive(true);
        let h2 = &spec.http2;
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .initial_stream_window_size(h2.initial_stream_window_bytes)
            .initial_connection_window_size(h2.initial_connection_window_bytes)
            .max_header_list_size(h2.max_header_list_bytes)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(h2.max_local_error_reset_streams);
        ListenerLimits {
            spec,
            counters,
            builder,
        }
    }
}

/// Open connections of one listener (all its workers), for `max_connections`.
#[derive(Debug, Default)]
pub struct OpenConnections(AtomicUsize);

impl OpenConnections {
    /// A slot for one more connection, or `None` at the cap.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenSlot> {
        let mut n = self.0.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(OpenSlot(Arc::clone(self))),
                Err(now) => n = now,
            }
        }
    }
}

/// A connection counted against its listener's cap until it drops.
#[derive(Debug)]
pub struct OpenSlot(Arc<OpenConnections>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which limit, if any, a connection's final error says it hit.
pub fn limit_of_conn_error(e: &(dyn std::error::Error + 'static)) -> Option<Limit> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        // h2 answers both rapid reset and CONTINUATION floods with this GOAWAY.
        if let Some(h2) = c.downcast_ref::<h2::Error>()
            && h2.is_library()
            && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            return Some(Limit::Http2Flood);
        }
        cause = c.source();
    }
    let h = e.downcast_ref::<hyper::Error>()?;
    if h.is_parse_too_large() {
        Some(Limit::RequestHeaders)
    } else if h.is_parse() {
        Some(Limit::MalformedRequest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_gives_slots_back_when_they_drop() {
        let open = Arc::new(OpenConnections::default());
        let a = open.try_open(2).unwrap();
        let _b = open.try_open(2).unwrap();
        assert!(open.try_open(2).is_none());
        drop(a);
        assert!(open.try_open(2).is_some());
    }

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
}
