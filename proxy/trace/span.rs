//! What a finished request leaves for its trace: one server span (the request as switchyard
//! handled it) and one client span per try at a backend, as plain data. Nothing here is
//! encoded or sent: [`super::otlp`] encodes, [`super::export`] sends, off the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use http::{HeaderValue, Method, Uri, Version};

use super::context::{SpanId, TraceId};
use crate::config::model::BackendAddr;

/// One request: its server span and the client spans of its tries, oldest first.
#[derive(Debug)]
pub(crate) struct RequestSpans {
    pub(crate) server: ServerSpan,
    pub(crate) tries: Vec<ClientSpan>,
}

impl RequestSpans {
    /// Spans in this request (the server span and one per try).
    pub(crate) fn span_count(&self) -> usize {
        1 + self.tries.len()
    }
}

/// The request as switchyard handled it, from arrival to the last byte of its response.
#[derive(Debug)]
pub(crate) struct ServerSpan {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    /// The caller's span, when the request carried a valid `traceparent`.
    pub(crate) parent: Option<SpanId>,
    pub(crate) sampled: bool,
    pub(crate) trace_state: Option<HeaderValue>,
    /// When the request arrived, and when its response ended.
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) method: Method,
    /// Its path is the span's `url.path` (the query is left out: it may carry secrets).
    pub(crate) uri: Uri,
    pub(crate) scheme: &'static str,
    pub(crate) version: Version,
    /// `Host`, or the authority of an HTTP/2 or absolute-form request.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) peer: SocketAddr,
    /// The status the client was answered with.
    pub(crate) status: u16,
    pub(crate) route: Option<Arc<str>>,
    /// The upstream and backend that answered (or the last tried).
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) backend: Option<BackendAddr>,
    /// Why switchyard answered itself (`x-switchyard-error`'s token), when it did.
    pub(crate) error: Option<&'static str>,
    /// The record's flags (`UF,RT`), when any is set.
    pub(crate) flags: Option<String>,
}

/// One try at a backend, from sending it to the end of its response (or its failure).
#[derive(Debug)]
pub(crate) struct ClientSpan {
    pub(crate) span_id: SpanId,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) upstream: Arc<str>,
    pub(crate) backend: BackendAddr,
    pub(crate) tls: bool,
    /// The response head's status, when one came.
    pub(crate) status: Option<u16>,
    /// The HTTP version spoken to the backend: the response's, or without one, the upstream's
    /// `protocol` (`None` when ALPN would have decided).
    pub(crate) version: Option<Version>,
    /// The try's classification (`success`, `server-error`, `timeout`, ...).
    pub(crate) outcome: &'static str,
    /// What went wrong when no answer came (`connect-failure`, `timeout`, `reset`, ...).
    pub(crate) error: Option<&'static str>,
    /// 0 for the first try, 1 for the first retry, and so on.
    pub(crate) resend: u32,
}

/// Turns the request path's monotonic instants into the Unix-epoch nanoseconds OTLP stamps
/// spans with: one reading of both clocks, taken off the request path when a batch is encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    now_ns: u64,
    now: Instant,
}

impl WallClock {
    pub(crate) fn now() -> WallClock {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        WallClock {
            now_ns,
            now: Instant::now(),
        }
    }

    /// `t` in nanoseconds since the Unix epoch.
    pub(crate) fn ns(&self, t: Instant) -> u64 {
        let back = u64::try_from(self.now.saturating_duration_since(t).as_nanos()).unwrap_or(0);
        let ahead = u64::try_from(t.saturating_duration_since(self.now).as_nanos()).unwrap_or(0);
        self.now_ns.saturating_sub(back).saturating_add(ahead)
    }
}
