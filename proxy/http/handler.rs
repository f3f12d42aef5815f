//! One request, start to end: refuse what must not be forwarded, load the snapshot once,
//! route, rate-limit, then the [`Attempt`] and the response.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::aim::Aim;
use super::attempt::send::Pools;
use super::attempt::{self, Attempt};
use super::exchange::ProxyBody;
use super::record::{Flags, Record};
use super::{access, fault, forward, grpc, headers, local, shadow, validate};
use crate::accesslog::request_id::X_REQUEST_ID;
use crate::error::ProxyError;
use crate::routing::Snapshot;
use crate::server::conn::{ConnInfo, Handler};
use crate::server::limits::Limit;
use crate::shared::Shared;
use crate::trace::RequestTrace;

/// The proxy, as the server hands it each request.
pub(crate) struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub(crate) fn new(shared: Arc<Shared>) -> Proxy {
        Proxy { shared }
    }
}

impl Handler for Proxy {
    type Body = ProxyBody;

    fn call(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        handle(&self.shared, conn, req)
    }
}

async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let names = headers::Names::scan(req.headers());
    let mut record = Record::start(Instant::now(), req.method().clone(), req.version());
    record.grpc = names.has(headers::Names::CONTENT_TYPE) && grpc::is_grpc(req.headers());
    let id = access::begin(conn, &mut req, names).map(|(line, id)| {
        record.access = Some(line);
        id
    });
    // Admission is synchronous, and only a routed request takes the one await: no future
    // between this one and `proxy`'s, which would be moved into place for every request.
    let mut resp = match admit(shared, conn, &mut req, names, record) {
        Admitted::Routed(routed) => proxy(shared, routed, req, conn).await,
        Admitted::Answered(resp) => resp,
    };
    // The id goes back to the client, whoever answered.
    if let Some(id) = id {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    resp
}

/// What admission came to: the request routed, or switchyard's own answer.
// Lives on the stack for a moment and is matched at once: boxing the response would cost an
// allocation instead.
#[allow(clippy::large_enum_variant)]
enum Admitted {
    Routed(Routed),
    Answered(Response<ProxyBody>),
}

/// A routed request's state besides the request itself.
struct Routed {
    snap: Arc<Snapshot>,
    /// The route's index in `snap`.
    route: usize,
    /// The tracked names the request carries.
    names: headers::Names,
    record: Box<Record>,
}

/// Refuses what must not be forwarded, loads the snapshot, routes and rate-limits a request
/// that carries `names`.
fn admit(
    shared: &Shared,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    names: headers::Names,
    mut record: Box<Record>,
) -> Admitted {
    if req.version() != http::Version::HTTP_2 && conn.heads.next_is_ambiguous() {
        conn.limits.counters.hit(Limit::MalformedRequest);
        record.flags.set(Flags::LIMIT_REJECTED);
        return Admitted::Answered(local::answer(
            None,
            record,
            StatusCode::BAD_REQUEST,
            "bad-request",
            "ambiguous framing: Content-Length twice, or with Transfer-Encoding",
        ));
    }
    match validate::check(req.version(), req.uri(), req.headers(), &conn.limits.spec) {
        Ok(a) if a.drop_underscored => {
            conn.limits.counters.hit(Limit::HeaderWithUnderscore);
            validate::drop_underscored(req.headers_mut());
        }
        Ok(_) => {}
        Err(r) => {
            conn.limits.counters.hit(r.limit);
            record.flags.set(Flags::LIMIT_REJECTED);
            let token = if r.status == StatusCode::PAYLOAD_TOO_LARGE {
                "body-too-large"
            } else {
                "bad-request"
            };
            return Admitted::Answered(local::answer(None, record, r.status, token, r.why));
        }
    }
    let snap = shared.snapshot();
    record.trace = RequestTrace::start(
        req,
        names.has(headers::Names::TRACEPARENT),
        conn.peer,
        conn.proto,
        &snap.config.tracing,
        &shared.tracer,
        record.started,
    );
    let host = request_host(req);
    let Some(route) = snap.router.find(host, req.uri().path(), req.headers()) else {
        shared.counters.unrouted();
        return Admitted::Answered(local::error(Some(snap), record, &ProxyError::no_route()));
    };
    record.route = Some(route);
    let rt = &snap.routes[route];
    if let Some(limit) = &rt.rate_limit
        && let Err(limited) = limit.admit(req.headers(), conn.peer.ip(), &rt.spec.name)
    {
        record.flags.set(Flags::RATE_LIMITED);
        let mut resp = local::answer(
            Some(Arc::clone(&snap)),
            record,
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests; retry after the time in Retry-After",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(limited.retry_after));
        return Admitted::Answered(resp);
    }
    Admitted::Routed(Routed {
        snap,
        route,
        names,
        record,
    })
}

/// Sends a routed request on its way and turns what came of it into the client's response.
async fn proxy(
    shared: &Shared,
    routed: Routed,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<ProxyBody> {
    let Routed {
        snap,
        route,
        names,
        mut record,
    } = routed;
    let rt = &snap.routes[route];
    let aim = Aim::new(rt, req.headers());
    if let Some(status) = fault::inject(rt, &aim, &mut record).await {
        let flags = record.flags;
        let mut resp = local::answer(
            Some(snap),
            record,
            status,
            "fault-injected",
            "fault injected by this route's `fault.abort`",
        );
        fault::label(&mut resp, flags);
        return resp;
    }
    // The route's deadline starts once any injected delay is over.
    let sent = if record.flags.has(Flags::FAULT_DELAY) {
        Instant::now()
    } else {
        record.started
    };
    let upgrade = names.has(headers::Names::CONNECTION)
        && headers::is_upgrade_request(req.version(), req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let timer = conn.timer(req.version());
    let (mut head, body) = req.into_parts();
    headers::prepare(&mut head, names, conn, upgrade);
    if let Some(t) = &record.trace {
        let stated = names.has(headers::Names::TRACESTATE);
        t.propagate(&mut head.headers, rt.shadow.is_some(), stated);
    }
    // Only switchyard marks copies: a client must not make a primary skip its side effects.
    if names.has(headers::Names::SHADOW_MARK) {
        head.headers.remove(&shadow::X_SWITCHYARD_SHADOW);
    }
    let mirror = rt
        .shadow
        .as_ref()
        .and_then(|s| shadow::start(s, &aim, &head, upgrade));
    if mirror.is_some() {
        record.flags.set(Flags::SHADOWED);
    }
    // A gRPC client's own deadline caps the route's: past it, nobody waits for the answer.
    let timeout = match record.grpc.then(|| grpc::timeout(&head.headers)).flatten() {
        Some(t) => rt.spec.timeout.min(t),
        None => rt.spec.timeout,
    };
    let mut attempt = Attempt::new(
        rt,
        aim,
        sent + timeout,
        timer,
        &head.method,
        &shared.counters.local,
        record,
    );
    let prepared = attempt::prepare_body(&mut attempt, &head, body, conn, upgrade).await;
    let result = match prepared {
        Ok((body, kept)) => {
            // The tap sits outside the guard: the copy sees only what the limits let through.
            let (body, compare) = match mirror {
                Some((m, tap)) => (m.attach(body, kept.as_ref()), Some(tap)),
                None => (body, None),
            };
            match attempt.run(&Pools, Request::from_parts(head, body)).await {
                Ok(answered) => Ok((answered, compare)),
                Err(e) => Err(e),
            }
        }
        Err(e) => {
            attempt.record.charge(attempt.aimed(), None);
            Err(e)
        }
    };
    let record = attempt.record;
    let flags = record.flags;
    let mut resp = match result {
        Ok((answered, compare)) => {
            forward::respond(snap, route, record, answered, client_upgrade, compare, conn)
        }
        Err(e) => {
            tracing::debug!(route = %snap.routes[route].spec.name, error = %e, "request failed");
            local::error(Some(snap), record, &e)
        }
    };
    fault::label(&mut resp, flags);
    resp
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}
