//! The request path's side of the access log: a line started when a request arrives on a
//! listener that logs (its `x-request-id` kept or made, and forwarded), finished from the
//! request's record when the exchange ends, and handed to the listener's writer. Listeners
//! without `access_log:` pay nothing here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Request;
use http::header::{self, HeaderValue};

use super::headers::Names;
use super::record::{Flags, Pending, Record};
use crate::accesslog::Entry;
use crate::accesslog::entry::{FlagSet, Sent};
use crate::accesslog::request_id::{self, X_REQUEST_ID};
use crate::routing::Snapshot;
use crate::server::conn::ConnInfo;

/// Starts the line of a request on a listener that logs, and makes sure the request carries
/// an `x-request-id` (a client's own when [`request_id::acceptable`], else a fresh one), which
/// the backend then sees. `names` are the request's, as it came. Returns the line and the id to
/// answer with.
pub(crate) fn begin<B>(
    conn: &ConnInfo,
    req: &mut Request<B>,
    names: Names,
) -> Option<(Pending, HeaderValue)> {
    let log = conn.limits.access_log.get()?;
    // One lookup to read the client's id and, when it is not kept, to set a fresh one.
    let request_id = match req.headers_mut().entry(&X_REQUEST_ID) {
        header::Entry::Occupied(o) if request_id::acceptable(o.get()) => o.get().clone(),
        header::Entry::Occupied(mut o) => {
            let id = request_id::generate();
            o.insert(id.clone());
            id
        }
        header::Entry::Vacant(v) => {
            let id = request_id::generate();
            v.insert(id.clone());
            id
        }
    };
    let uri = req.uri();
    let authority = match uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers().get(header::HOST).map(HeaderValue::as_bytes),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let entry = Box::new(Entry {
        time: SystemTime::now(),
        listener: Arc::clone(&log.listener),
        client: conn.peer,
        method: req.method().clone(),
        version: req.version(),
        sent: Sent::new(path.as_bytes(), authority, request_id.as_bytes()),
        trace: None,
        bytes_received: body_length(req, names),
        status: 0,
        route: None,
        upstream: None,
        backend: None,
        attempts: 0,
        duration: Duration::ZERO,
        upstream_time: None,
        bytes_sent: 0,
        flags: FlagSet {
            bits: 0,
            names: &Flags::NAMES,
        },
    });
    Some((Pending { log, entry }, request_id))
}

/// Fills the line from the finished record and queues it (never waits).
pub(crate) fn finish(line: Pending, r: &Record, snap: Option<&Snapshot>) {
    let Pending { log, mut entry } = line;
    let route = snap.zip(r.route).map(|(s, i)| &s.routes[i]);
    let target = route.zip(r.target).map(|(rt, t)| &rt.targets[t]);
    let e = &mut *entry;
    e.status = r.status;
    e.route = route.map(|rt| Arc::clone(&rt.spec.name));
    e.upstream = target.map(|t| Arc::clone(&t.upstream.spec.name));
    e.backend = target
        .zip(r.backend)
        .and_then(|(t, b)| t.upstream.backends.get(b))
        .map(|b| b.state.addr.authority.clone());
    e.attempts = u32::try_from(r.attempts()).unwrap_or(u32::MAX);
    e.duration = r.duration;
    e.upstream_time = r.upstream_time();
    e.bytes_sent = r.bytes_sent;
    e.flags.bits = r.flags.bits();
    e.trace = r.trace_ids();
    log.sink.send(entry);
}

/// The request body's length when the head says it: `Content-Length`, or 0 for an HTTP/1
/// request with neither it nor `Transfer-Encoding`. A streamed body of unknown length is `None`.
fn body_length<B>(req: &Request<B>, names: Names) -> Option<u64> {
    if names.has(Names::CONTENT_LENGTH)
        && let Some(v) = req.headers().get(header::CONTENT_LENGTH)
    {
        return v.to_str().ok()?.parse().ok();
    }
    let http1 = req.version() < http::Version::HTTP_2;
    (http1 && !names.has(Names::TRANSFER_ENCODING)).then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(version: http::Version, headers: &[(&str, &str)]) -> Option<u64> {
        let mut req = Request::post("/").version(version);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        body_length(&req, Names::scan(req.headers()))
    }

    #[test]
    fn the_body_length_is_what_the_head_says() {
        use http::Version;
        assert_eq!(
            length(Version::HTTP_11, &[("content-length", "5")]),
            Some(5)
        );
        assert_eq!(length(Version::HTTP_11, &[("host", "a")]), Some(0));
        assert_eq!(
            length(Version::HTTP_11, &[("transfer-encoding", "chunked")]),
            None
        );
        assert_eq!(length(Version::HTTP_2, &[]), None);
        assert_eq!(length(Version::HTTP_2, &[("content-length", "7")]), Some(7));
        assert_eq!(length(Version::HTTP_11, &[("content-length", "x")]), None);
    }
}
