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

use super::handler::{ConnInfo, ProxyBody};
use super::headers;
use std::sync::Arc;

use crate::backend::pool::{Conn, ConnPool, SendError};
use crate::backend::{Backend, InFlight};
use crate::body::{BodyEnd, BodyGuard, ClientBodyError, ReqBody, RespBody};
use crate::config::model::Route;
use crate::error::{ErrorKind, ProxyError};

/// Lives as long as the response streams: the request counts as in flight to its backend until
/// the client has the last byte or goes away, and the connection goes back to the pool only
/// once the response was read to its end.
pub struct Exchange {
    _in_flight: InFlight,
    conn: Option<(Arc<ConnPool>, Conn)>,
}

impl BodyGuard for Exchange {
    fn finish(self, end: BodyEnd) {
        if let (BodyEnd::Complete, Some((pool, conn))) = (end, self.conn) {
            pool.checkin(conn);
        }
    }
}

pub async fn forward(
    mut req: Request<Incoming>,
    backend: &Backend,
    route: &Route,
    conn: &ConnInfo,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = headers::is_upgrade_request(req.version(), req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let from_h2 = req.version() == Version::HTTP_2;
    let (mut parts, body) = req.into_parts();
    prepare(&mut parts, backend, conn, upgrade);
    let upstream_req = Request::from_parts(parts, ReqBody::Streaming(body));

    let in_flight = InFlight::start(&backend.state);
    let sent = within(
        route.timeout,
        from_h2,
        conn,
        backend.pool.send(upstream_req),
    )
    .await;
    let (mut resp, upstream_conn) = match sent {
        Some(Ok(exchange)) => exchange,
        Some(Err(e)) => return Err(classify(e, backend)),
        None => {
            return Err(ProxyError::timeout(&backend.state.upstream, route.timeout)
                .with_detail(backend.state.addr.as_str()));
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let token = conn.tracker.token();
        tokio::spawn(async move {
            let _drain = token;
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
        return Ok(resp.map(|_| RespBody::empty()));
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| {
        RespBody::upstream(
            b,
            Exchange {
                _in_flight: in_flight,
                conn: Some((Arc::clone(&backend.pool), upstream_conn)),
            },
        )
    }))
}

/// Runs `fut` for at most `limit`; `None` if time ran out. HTTP/1.1 requests come one at a time
/// per connection and share the connection's lazily re-armed timer; HTTP/2 streams run side by
/// side, so each gets a timer of its own.
async fn within<F: Future>(
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

/// Rewrites the client's request head for the backend.
fn prepare(parts: &mut Parts, backend: &Backend, conn: &ConnInfo, upgrade: bool) {
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
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 carries the host in `:authority`; HTTP/1.0 may carry none at all.
        let host = host.unwrap_or_else(|| {
            HeaderValue::from_str(backend.state.addr.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost"))
        });
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

/// Whose fault a failed exchange was.
fn classify(e: SendError, backend: &Backend) -> ProxyError {
    let upstream = &backend.state.upstream;
    let addr = backend.state.addr.as_str();
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
