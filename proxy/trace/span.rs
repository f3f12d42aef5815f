//! What a finished request leaves for its trace: one server span (the request as switchyard
//! handled it) and one client span per try at a backend, as plain data. Nothing here is
//! encoded or sent: [`super::otlp`] encodes, [`super::export`] sends, off the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};

use super::context::{SpanId, TraceId};
use crate::config::model::BackendAddr;

/// One request: its server span and the client spans of its tries, oldest first.
#[derive(Debug)]
pub struct RequestSpans {
    pub server: ServerSpan,
    pub tries: Vec<ClientSpan>,
}

impl RequestSpans {
    /// Spans in this request (the server span and one per try).
    pub fn span_count(&self) -> usize {
        1 + self.tries.len()
    }
}

/// The request as switchyard handled it, from arrival to the last byte of its response.
#[derive(Debug)]
pub struct ServerSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: Option<HeaderValue>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub method: Method,
    /// Its path is the span's `url.path` (the query is left out: it may carry secrets).
    pub uri: Uri,
    pub scheme: &'static str,
    pub version: Version,
    /// `Host`, or the authority of an HTTP/2 or absolute-form request.
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub peer: SocketAddr,
    /// The status the client was answered with.
    pub status: u16,
    pub route: Option<Arc<str>>,
    /// The upstream and backend that answered (or the last tried).
    pub upstream: Option<Arc<str>>,
    pub backend: Option<BackendAddr>,
    /// Why switchyard answered itself (`x-switchyard-error`'s token), when it did.
    pub error: Option<&'static str>,
}

/// One try at a backend, from sending it to the end of its response (or its failure).
#[derive(Debug)]
pub struct ClientSpan {
    pub span_id: SpanId,
    pub start_ns: u64,
    pub end_ns: u64,
    pub upstream: Arc<str>,
    pub backend: BackendAddr,
    pub tls: bool,
    /// The response head's status, when one came.
    pub status: Option<u16>,
    /// What went wrong, when it did (`connect-failure`, `timeout`, `reset`, ...).
    pub error: Option<&'static str>,
    /// 0 for the first try, 1 for the first retry, and so on.
    pub resend: u32,
}

/// Nanoseconds since the Unix epoch, as OTLP stamps spans.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
