//! One request, start to end: load the snapshot once, route, split, pick, forward, count.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::forward::Exchange;
use super::{attempt, validate};
use crate::body::RespBody;
use crate::error::ProxyError;
use crate::server::clock::LazyTimer;
use crate::server::limits::{Limit, ListenerLimits, OpenSlot};
use crate::server::shutdown::Tracker;
use crate::server::sniff::HeadWatch;
use crate::shared::Shared;
use crate::trace::{Answered, RequestTrace, TryEnd};

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
    /// The listener's limits and their counters.
    pub limits: Arc<ListenerLimits>,
    /// This connection's place under the listener's `max_connections`; an upgraded tunnel
    /// holds it until the tunnel closes.
    pub slot: Arc<OpenSlot>,
    /// Which HTTP/1 request head had framing hyper repaired quietly (CL+TE, CL twice).
    pub heads: Arc<HeadWatch>,
}

pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    if req.version() != http::Version::HTTP_2 && conn.heads.next_is_ambiguous() {
        conn.limits.counters.hit(Limit::MalformedRequest);
        return local_response(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "ambiguous framing: Content-Length twice, or with Transfer-Encoding",
        );
    }
    match validate::check(req.version(), req.uri(), req.headers(), &conn.limits.spec) {
        Ok(a) if a.drop_underscored => {
            conn.limits.counters.hit(Limit::HeaderWithUnderscore);
            validate::drop_underscored(req.headers_mut());
        }
        Ok(_) => {}
        Err(r) => {
            conn.limits.counters.hit(r.limit);
            let token = if r.status == StatusCode::PAYLOAD_TOO_LARGE {
                "body-too-large"
            } else {
                "bad-request"
            };
            return local_response(r.status, token, r.why);
        }
    }
    let snap = shared.snapshot();
    let mut trace = RequestTrace::start(
        &req,
        conn.peer,
        conn.proto,
        &snap.config.tracing,
        &shared.tracer,
    );
    let host = request_host(&req);
    let Some(route_idx) = snap.router.find(host, req.uri().path(), req.headers()) else {
        shared.counters.no_route.fetch_add(1, Ordering::Relaxed);
        let e = ProxyError::no_route();
        return answered_locally(trace, error_response(&e), e.kind().as_str());
    };
    let route = &snap.routes[route_idx];
    trace.routed(&route.spec.name);
    if let Some(limit) = &route.rate_limit
        && let Err(limited) = limit.admit(req.headers(), conn.peer.ip(), &route.spec.name)
    {
        return answered_locally(trace, limited.response(), "rate-limited");
    }
    attempt::proxy(route, req, conn, trace).await
}

/// Ends a request switchyard answered itself (`error` is the answer's `x-switchyard-error`).
pub fn answered_locally(
    trace: RequestTrace,
    resp: Response<ProxyBody>,
    error: &'static str,
) -> Response<ProxyBody> {
    trace.finish(
        TryEnd::NONE,
        Answered {
            status: resp.status().as_u16(),
            error: Some(error),
            upstream: None,
        },
    );
    resp
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
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
    // The rest of the request may be unread or unreadable: the connection cannot go on.
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
