//! One request as its access log line is written from: owned, compact, and cheap to fill on
//! the request path (reference-counted names, the client's strings copied into one buffer, no
//! formatting).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Version};

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
    /// The path, authority and request id.
    pub(crate) sent: Sent,
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

/// What the line repeats of the client's request (path with query, authority, request id),
/// copied into one buffer of its own: the request's own bytes are slices of its connection's
/// read buffer (8 KiB or more), which a line waiting for the writer would keep alive, and
/// which the connection would then have to replace for its next request.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    buf: Vec<u8>,
    path_end: usize,
    /// Where the authority ends; `None` when the client sent none.
    authority_end: Option<usize>,
}

impl Sent {
    pub(crate) fn new(path: &[u8], authority: Option<&[u8]>, request_id: &[u8]) -> Sent {
        let len = path.len() + authority.map_or(0, <[u8]>::len) + request_id.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(path);
        let path_end = buf.len();
        let authority_end = authority.map(|a| {
            buf.extend_from_slice(a);
            buf.len()
        });
        buf.extend_from_slice(request_id);
        Sent {
            buf,
            path_end,
            authority_end,
        }
    }

    /// The request target's path and query.
    pub(crate) fn path(&self) -> &[u8] {
        &self.buf[..self.path_end]
    }

    /// The URI's authority (HTTP/2, absolute form), else `Host`.
    pub(crate) fn authority(&self) -> Option<&[u8]> {
        self.authority_end.map(|end| &self.buf[self.path_end..end])
    }

    pub(crate) fn request_id(&self) -> &[u8] {
        &self.buf[self.authority_end.unwrap_or(self.path_end)..]
    }
}

#[cfg(test)]
mod tests {
    use super::Sent;

    #[test]
    fn three_strings_in_one_buffer() {
        let s = Sent::new(b"/a?b", Some(b"h:1"), b"id");
        assert_eq!(
            (s.path(), s.authority(), s.request_id()),
            (&b"/a?b"[..], Some(&b"h:1"[..]), &b"id"[..])
        );
        let s = Sent::new(b"/", None, b"");
        assert_eq!(
            (s.path(), s.authority(), s.request_id()),
            (&b"/"[..], None, &b""[..])
        );
    }
}
