//! Sends a routed request to its backend and streams the answer back.

use std::error::Error as StdError;
use std::task::Poll;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::handler::{ConnInfo, ProxyBody};
use super::shadow::PrimaryTap;
use super::{choose, headers};
use crate::backend::pool::{Conn, ConnPool, Failed, SendError};
use crate::backend::state::Ticket;
use crate::backend::{Backend, InFlight};
use crate::body::{BodyEnd, BodyGuard, ClientBodyError, ReqBody, RespBody};
use crate::error::{ErrorKind, ProxyError};
use crate::stats::{Outcome, TargetStats};
use crate::trace::{Answered, PendingSpans, RequestTrace, TryEnd};

/// Lives as long as the response streams: the request counts as in flight to its backend until
/// the client has the last byte or goes away; then the try's outcome is recorded (backend
/// statistics, breaker, the route's numbers) and the connection goes back to the pool, only if
/// the response was read to its end.
pub struct Exchange {
    in_flight: InFlight,
    conn: Option<(Arc<ConnPool>, Conn)>,
    target: Arc<TargetStats>,
    ticket: Ticket,
    /// When the request arrived (the route's duration spans every try).
    started: Instant,
    ttfb: Duration,
    status: u16,
    /// The copy of the response a shadow comparison waits for.
    compare: Option<Box<PrimaryTap>>,
    trace: PendingSpans,
}

impl BodyGuard for Exchange {
    fn data(&mut self, chunk: &bytes::Bytes) {
        if let Some(c) = &mut self.compare {
            c.data(chunk);
        }
    }

    fn finish(self, end: BodyEnd) {
        if let (BodyEnd::Complete, Some(c)) = (end, self.compare) {
            c.finish();
        }
        let now = Instant::now();
        let outcome = match end {
            BodyEnd::UpstreamError => Outcome::Reset,
            // A client that leaves says nothing about the backend: its status still does.
            BodyEnd::Complete | BodyEnd::Dropped => Outcome::from_status(self.status),
        };
        let backend = self.in_flight.backend();
        if let Some(t) = backend.record(outcome, self.ticket, Some(self.ttfb), now) {
            choose::log_transition(backend, &t);
        }
        self.target.record(outcome, Some(self.ttfb), now);
        self.target
            .duration
            .record(now.saturating_duration_since(self.started));
        if let (BodyEnd::Complete, Some((pool, conn))) = (end, self.conn) {
            pool.checkin(conn);
        }
        let error = match end {
            BodyEnd::UpstreamError => Some(crate::error::ErrorKind::Reset.as_str()),
            // The status is the answer; a client that left early does not change it.
            BodyEnd::Complete | BodyEnd::Dropped => None,
        };
        self.trace.finish(
            TryEnd {
                status: Some(self.status),
                error,
            },
            Answered {
                status: self.status,
                ..Answered::default()
            },
        );
    }
}

/// What one try at a backend came to, before any response body.
pub enum Tried {
    Answered {
        resp: Response<Incoming>,
        conn: Conn,
        in_flight: InFlight,
        ticket: Ticket,
        ttfb: Duration,
    },
    Failed {
        error: ProxyError,
        /// The request, when it never reached the backend (it may go elsewhere).
        unsent: Option<Request<ReqBody>>,
    },
}

/// Sends one try and waits (at most `limit`) for the response head. A failure is recorded
/// against the backend here; an answer is recorded when its body ends.
pub async fn try_once(
    mut req: Request<ReqBody>,
    backend: &Backend,
    ticket: Ticket,
    limit: Duration,
    h2: bool,
    conn: &ConnInfo,
) -> Tried {
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(backend.state.addr.as_str())
    {
        // HTTP/1.0 without a Host: name the backend, as a direct client would.
        req.headers_mut().insert(header::HOST, host);
    }
    let in_flight = InFlight::start(&backend.state);
    let sent_at = Instant::now();
    let sent = within(limit, h2, conn, backend.pool.send(req)).await;
    let (error, outcome, unsent) = match sent {
        Some(Ok((resp, conn))) => {
            return Tried::Answered {
                resp,
                conn,
                in_flight,
                ticket,
                ttfb: sent_at.elapsed(),
            };
        }
        Some(Err(Failed { error, unsent })) => {
            let e = classify(error, backend);
            let outcome = match e.kind() {
                ErrorKind::Connect => Some(Outcome::ConnectFailure),
                ErrorKind::Reset => Some(Outcome::Reset),
                _ => None,
            };
            (e, outcome, unsent)
        }
        None => (
            ProxyError::timeout(&backend.state.upstream, limit)
                .with_detail(backend.state.addr.as_str()),
            Some(Outcome::Timeout),
            None,
        ),
    };
    // Without an outcome it was the client's fault: the ticket just goes back.
    if let Some(o) = outcome
        && let Some(t) = backend.state.record(o, ticket, None, Instant::now())
    {
        choose::log_transition(&backend.state, &t);
    }
    Tried::Failed { error, unsent }
}

/// Turns a backend's answer into the client's response: hop-by-hop headers out, the body
/// streamed behind an [`Exchange`], or an upgraded connection tunnelled both ways.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    mut resp: Response<Incoming>,
    upstream_conn: Conn,
    in_flight: InFlight,
    backend: &Backend,
    target: &Arc<TargetStats>,
    ticket: Ticket,
    started: Instant,
    ttfb: Duration,
    client_upgrade: Option<OnUpgrade>,
    conn: &ConnInfo,
    compare: Option<PrimaryTap>,
    trace: RequestTrace,
) -> Response<ProxyBody> {
    let status = resp.status().as_u16();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let now = Instant::now();
        backend
            .state
            .record(Outcome::Success, ticket, Some(ttfb), now);
        target.record(Outcome::Success, Some(ttfb), now);
        // The tunnel's life is not the request's: its spans end with the 101.
        let done = TryEnd {
            status: Some(status),
            error: None,
        };
        trace.finish(
            done,
            Answered {
                status,
                ..Answered::default()
            },
        );
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let token = conn.tracker.token();
        let slot = Arc::clone(&conn.slot);
        tokio::spawn(async move {
            let _drain = token;
            let _slot = slot;
            let _in_flight = in_flight;
            // Hold the connection's handle until the upgrade is through.
            let _upstream_conn = upstream_conn;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        headers::strip_hop_by_hop(resp.headers_mut(), true);
        return resp.map(|_| RespBody::empty());
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    let compare = compare.map(|mut c| {
        c.begin(status, resp.headers());
        Box::new(c)
    });
    resp.map(|b| {
        RespBody::upstream(
            b,
            Exchange {
                in_flight,
                conn: Some((Arc::clone(&backend.pool), upstream_conn)),
                target: Arc::clone(target),
                ticket,
                started,
                ttfb,
                status,
                compare,
                trace: trace.pending(),
            },
        )
    })
}

/// Runs `fut` for at most `limit`; `None` if time ran out. HTTP/1.1 requests come one at a time
/// per connection and share the connection's lazily re-armed timer; HTTP/2 streams run side by
/// side, so each gets a timer of its own.
pub async fn within<F: Future>(
    limit: Duration,
    h2: bool,
    conn: &ConnInfo,
    fut: F,
) -> Option<F::Output> {
    if h2 {
        return tokio::time::timeout(limit, fut).await.ok();
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        // Poisoning cannot leave the timer inconsistent: use it anyway.
        let mut timer = conn.route_timer.lock().unwrap_or_else(|p| p.into_inner());
        timer.poll_deadline(deadline, cx).map(|()| None)
    })
    .await
}

/// Rewrites the client's request head for the backends (once, whatever the number of tries).
pub fn prepare(parts: &mut Parts, conn: &ConnInfo, upgrade: bool) {
    let from_h2 = parts.version == Version::HTTP_2;
    let host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(
        &mut parts.headers,
        &conn.peer_value,
        conn.proto,
        host.clone(),
    );
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = host
    {
        // HTTP/2 carries the host in `:authority`.
        parts.headers.insert(header::HOST, host);
    }
    if from_h2 {
        join_cookies(&mut parts.headers);
    }

    // Origin-form (`/path?query`), as a backend expects from a client.
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(pq);
    parts.version = Version::HTTP_11;
}

/// HTTP/2 may split `cookie` into many fields; HTTP/1.1 servers expect one (RFC 9113 8.2.3).
fn join_cookies(h: &mut http::HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// A copy of a prepared request head, for another try (extensions are not copied).
pub fn clone_head(head: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}

/// Whose fault a failed exchange was.
fn classify(e: SendError, backend: &Backend) -> ProxyError {
    let upstream = &backend.state.upstream;
    let addr = backend.state.addr.as_str();
    if let Some(limit) = e
        .hyper()
        .and_then(|h| find_in_chain::<crate::http::body_guard::BodyLimitError>(h))
    {
        return limit.to_proxy_error().with_source(e);
    }
    if let Some(client) = e.hyper().and_then(|h| find_in_chain::<ClientBodyError>(h)) {
        let framing = !client.0.is_incomplete_message()
            && find_in_chain::<std::io::Error>(&client.0).is_none_or(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            });
        let (kind, why) = if framing {
            (ErrorKind::BadRequest, "the request body is malformed")
        } else {
            (
                ErrorKind::ClientGone,
                "the client stopped sending the request body",
            )
        };
        return ProxyError::new(kind, why).with_source(e);
    }
    let (kind, why) = if e.is_connect() {
        (
            ErrorKind::Connect,
            format!("cannot connect to upstream `{upstream}`"),
        )
    } else {
        (
            ErrorKind::Reset,
            format!("upstream `{upstream}` closed the connection without a valid response"),
        )
    };
    ProxyError::new(kind, why).with_detail(addr).with_source(e)
}

fn find_in_chain<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}
