//! A listener's limits as the serving code uses them: the hyper connection builder they shape,
//! and the counters that say how often each limit triggered
//! (`switchyard_limit_rejections_total{listener,limit}`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper_util::rt::TokioTimer;

use super::proto::ConnBuilder;
use crate::config::limits::Limits;
pub use crate::stats::limits::{Limit, LimitCounters, LimitStats};

/// One listener's limits, ready to serve with.
pub struct ListenerLimits {
    pub spec: Limits,
    pub counters: Arc<LimitCounters>,
    pub builder: ConnBuilder,
}

impl ListenerLimits {
    pub fn new(spec: Limits, counters: Arc<LimitCounters>) -> Self {
        let mut builder = ConnBuilder::new();
        builder
            .http1
            .timer(TokioTimer::new())
            // Our own watchdog covers this (see `conn::serve`); hyper's costs a timer per
            // request and covers only the first request of a connection.
            .header_read_timeout(None)
            .max_buf_size(spec.max_request_header_bytes)
            .max_headers(spec.max_request_headers)
            .keep_alive(true);
        let h2 = &spec.http2;
        builder
            .http2
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
}
