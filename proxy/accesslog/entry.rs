//! One request as its access log line is written from: owned, compact, and cheap to fill on
//! the request path (reference-counted names and the request's own buffers, no formatting).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::{Method, Uri, Version};

/// Response flags as bits, with the short name of each bit (bit `i` is `names[i]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlagSet {
    pub(crate) bits: u16,
    pub(crate) names: &'static [&'static str],
}

impl FlagSet {
    pub(crate) fn iter(self) -> impl Iterator<Item = &'static str> {
        self.names
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

/// A request's line, filled when it arrives and when it ends; formatted by the writer.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Wall-clock time the request arrived.
    pub(crate) time: SystemTime,
    pub(crate) listener: Arc<str>,
    pub(crate) client: SocketAddr,
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// The request target as the client sent it (path and query; the authority too when the
    /// client sent an absolute form or HTTP/2).
    pub(crate) uri: Uri,
    /// `Host`, when the URI carries no authority.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    /// The request's trace and switchyard's server span in it; `None` with `tracing.propagate`
    /// off, or for a request refused before routing.
    pub(crate) trace: Option<crate::trace::TraceIds>,
    /// The request body's length when known (Content-Length, or none for a bodiless
    /// HTTP/1.1 request).
    pub(crate) bytes_received: Option<u64>,
    pub(crate) status: u16,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) backend: Option<http::uri::Authority>,
    pub(crate) attempts: u32,
    pub(crate) duration: Duration,
    /// Time from sending the last try to its response head.
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) bytes_sent: u64,
    pub(crate) flags: FlagSet,
}

impl Entry {
    /// The authority the client asked for: the URI's, else `Host`.
    pub(crate) fn authority(&self) -> Option<&[u8]> {
        match self.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => self.host.as_ref().map(HeaderValue::as_bytes),
        }
    }
}
