//! One request, start to end: load the snapshot once, route, split, pick, forward, count.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::forward::{self, Exchange};
use super::{headers, pick};
use crate::body::RespBody;
use crate::error::{ErrorKind, ProxyError};
use crate::reload::snapshot::RouteRuntime;
use crate::server::clock::LazyTimer;
use crate::server::shutdown::Tracker;
use crate::shared::Shared;

pub type ProxyBody = RespBody<Exchange>;

/// What the handler knows about the connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` shows it.
    pub peer_value: HeaderValue,
    /// `X-Forwarded-Proto` for requests on this connection.
    pub proto: &'static str,
    /// Upgraded tunnels register here so a drain waits for them.
    pub tracker: Tracker,
    /// Times the route timeout of HTTP/1.1 requests, one at a time on this connection.
    pub route_timer: Mutex<LazyTimer>,
}

pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let snap = shared.snapshot();
    let host = request_host(&req);
    let Some(route_idx) = snap.router.find(host, req.uri().path(), req.headers()) else {
        shared.counters.no_route.fetch_add(1, Ordering::Relaxed);
        return error_response(&ProxyError::no_route());
    };
    let route = &snap.routes[route_idx];
    let (target_idx, backend_idx) = match choose(route, &req) {
        Ok(choice) => choice,
        Err((target_idx, e)) => {
            let resp = error_response(&e);
            route.targets[target_idx]
                .unassigned
                .record(resp.status().as_u16());
            return resp;
        }
    };
    let target = &route.targets[target_idx];
    let backend = &target.pool.backends[backend_idx];
    let resp = match forward::forward(req, backend, &route.spec, conn).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(route = %route.spec.name, upstream = %target.pool.spec.name,
                backend = %backend.state.addr.as_str(), error = %e, "request failed");
            error_response(&e)
        }
    };
    target.counters[backend_idx].record(resp.status().as_u16());
    resp
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Picks (target, backend) for a request, or says which target failed and why.
fn choose(
    route: &RouteRuntime,
    req: &Request<Incoming>,
) -> Result<(usize, usize), (usize, ProxyError)> {
    let spec = &route.spec;
    let forced = spec.override_header.as_ref().and_then(|name| {
        let wanted = req.headers().get(name)?.as_bytes();
        route
            .targets
            .iter()
            .position(|t| t.pool.spec.name.as_bytes() == wanted)
    });
    let target_idx = forced.unwrap_or_else(|| match sticky_key(route, req) {
        Some(key) => route.split.pick_sticky(key),
        None => route.split.pick(route.next_seq()),
    });
    let pool = &route.targets[target_idx].pool;
    let backend_idx = pick::pick(
        pool.backends.len(),
        pool.next_rr(),
        pick::fast_random(),
        |i| pool.backends[i].state.in_flight(),
        |_| true,
    );
    match backend_idx {
        Some(b) => Ok((target_idx, b)),
        None => Err((
            target_idx,
            ProxyError::new(
                ErrorKind::NoBackend,
                format!(
                    "upstream `{}` has no backend to take this request",
                    pool.spec.name
                ),
            ),
        )),
    }
}

fn sticky_key<'r>(route: &RouteRuntime, req: &'r Request<Incoming>) -> Option<&'r [u8]> {
    use crate::config::model::StickyKey;
    match route.spec.sticky.as_ref()? {
        StickyKey::Header(name) => req.headers().get(name).map(HeaderValue::as_bytes),
        StickyKey::Cookie(name) => headers::cookie(req.headers(), name),
    }
    .filter(|k| !k.is_empty())
}

/// The one place a [`ProxyError`] becomes a response: its status, a short plain-text body that
/// names the cause (never a backend address), and `x-switchyard-error` for machines.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    local_response(e.status(), e.kind().as_str(), e.context())
}

pub fn local_response(status: StatusCode, token: &'static str, text: &str) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: {text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-switchyard-error", HeaderValue::from_static(token));
    if status == StatusCode::BAD_REQUEST {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
