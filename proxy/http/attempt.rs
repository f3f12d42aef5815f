//! One routed request, over as many tries as its route allows: pick a backend, try it, and on a
//! retryable failure try another (never the same one while another is available), within the
//! route's timeout and its retry budget.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body_guard;
use super::choose::{self, Aim};
use super::fault;
use super::forward::{self, Tried};
use super::handler::{ConnInfo, ProxyBody, answered_locally, error_response};
use super::headers;
use super::retry::{self, Failure};
use super::shadow;
use crate::body::ReqBody;
use crate::config::resilience::MAX_REPLAY_BODY;
use crate::error::{ErrorKind, ProxyError};
use crate::reload::snapshot::RouteRuntime;
use crate::stats::Outcome;
use crate::trace::{Answered, RequestTrace, TryEnd};

/// Other backends tried after a connect failure when the route has no retry policy.
const IMPLICIT_CONNECT_RETRIES: u32 = 2;

pub async fn proxy(
    route: &RouteRuntime,
    req: Request<Incoming>,
    conn: &ConnInfo,
    trace: RequestTrace,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let aim = Aim::new(route, &req);
    let injected = match fault::inject(route, &aim, started).await {
        Ok(injected) => injected,
        Err(aborted) => return answered_locally(trace, aborted.response(), "fault-injected"),
    };
    // The route's deadline starts once any injected delay is over.
    let sent = if injected.delay.is_some() {
        Instant::now()
    } else {
        started
    };
    let mut resp = send(route, req, conn, aim, started, sent, trace).await;
    fault::label(&mut resp, &injected);
    resp
}

/// Sends a request the split has aimed; its deadline is the route's timeout from `sent`.
async fn send(
    route: &RouteRuntime,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    aim: Aim,
    started: Instant,
    sent: Instant,
    mut trace: RequestTrace,
) -> Response<ProxyBody> {
    let deadline = sent + route.spec.timeout;
    let policy = route.spec.retries.as_ref();
    if let Some(budget) = &route.budget {
        budget.deposit(started);
    }
    let upgrade = headers::is_upgrade_request(req.version(), req.headers());
    let mut client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let h2 = req.version() == Version::HTTP_2;
    let method = req.method().clone();
    let (mut head, body) = req.into_parts();
    forward::prepare(&mut head, conn, upgrade);
    trace.propagate(&mut head.headers, route.shadow.is_some());
    // Only switchyard marks copies: a client must not make a primary skip its side effects.
    head.headers.remove(&shadow::X_SWITCHYARD_SHADOW);
    let mirror = route
        .shadow
        .as_ref()
        .and_then(|s| shadow::start(s, &aim, &head, upgrade));

    // The listener's body limits hold however the body is read, kept for replay included.
    let left = deadline.saturating_duration_since(Instant::now());
    let body = match body_guard::guard(ReqBody::Streaming(body), conn, h2, left).await {
        Ok(b) => b,
        Err(e) => return answer(route, aim.target, None, &e, started, trace),
    };
    // A small body is kept whole so that a failed try can be replayed; a large one streams.
    let (first_body, replay) = if policy.is_some() && !upgrade {
        match keep_small(body, deadline, h2, conn).await {
            Ok(kept) => kept,
            Err(e) => return answer(route, aim.target, None, &e, started, trace),
        }
    } else {
        (body, None)
    };
    // The tap sits outside the guard: the copy sees only what the limits let through.
    let (first_body, mut primary_tap) = match mirror {
        Some((m, tap)) => (m.attach(first_body, replay.as_ref()), tap),
        None => (first_body, None),
    };
    let template = replay.as_ref().map(|_| forward::clone_head(&head));
    let mut next = Some(Request::from_parts(head, first_body));
    let mut tried: Vec<(usize, usize)> = Vec::new();
    let mut retries = 0u32;
    // The last try's error, answered if no other backend is left for an implicit retry.
    let mut last: Option<(ProxyError, usize, usize)> = None;

    loop {
        // Taken before a backend is picked: a pick may hold a half-open probe slot.
        let Some(req) = next.take() else {
            let e = ProxyError::new(ErrorKind::Internal, "no request left to send");
            return answer(route, aim.target, None, &e, started, trace);
        };
        let now = Instant::now();
        let fresh = |t: usize, b: usize| tried.contains(&(t, b));
        // Another backend if there is one; the same one again only if nothing else is left,
        // and only for a route that asked for retries.
        let pick = match choose::choose(route, &aim, &fresh, now) {
            Ok(p) => p,
            Err(e) if tried.is_empty() => {
                return answer(route, aim.target, None, &e, started, trace);
            }
            Err(e) => match (policy, last.take()) {
                (Some(_), _) => match choose::choose(route, &aim, &|_, _| false, now) {
                    Ok(p) => p,
                    Err(e) => return answer(route, aim.target, None, &e, started, trace),
                },
                (None, Some((err, t, b))) => {
                    return answer(route, t, Some(b), &err, started, trace);
                }
                (None, None) => return answer(route, aim.target, None, &e, started, trace),
            },
        };
        tried.push((pick.target, pick.backend));
        let target = &route.targets[pick.target];
        let backend = &target.pool.backends[pick.backend];
        let left = deadline.saturating_duration_since(now);
        let limit = policy
            .and_then(|p| p.per_try_timeout)
            .map_or(left, |t| t.min(left));
        let mut req = req;
        trace.try_started(
            req.headers_mut(),
            &target.pool.spec.name,
            &backend.state.addr,
            backend.pool.transport().tls.is_some(),
        );
        let failure;
        match forward::try_once(req, backend, pick.ticket, limit, h2, conn).await {
            Tried::Answered {
                resp,
                conn: upstream,
                in_flight,
                ticket,
                ttfb,
            } => {
                let status = resp.status().as_u16();
                let retry = status >= 500
                    && policy.is_some_and(|p| {
                        retry::wants_retry(
                            p,
                            Failure::Status(status),
                            &method,
                            replay.is_some(),
                            retries,
                        )
                    })
                    && may_retry(route, pick.target, deadline);
                if !retry {
                    target.counters[pick.backend].record(status);
                    return forward::respond(
                        resp,
                        upstream,
                        in_flight,
                        backend,
                        &target.stats,
                        ticket,
                        started,
                        ttfb,
                        client_upgrade.take(),
                        conn,
                        primary_tap.take(),
                        trace,
                    );
                }
                // Recorded now (the body is never read): the connection closes with it.
                let now = Instant::now();
                let outcome = Outcome::ServerError;
                if let Some(t) = backend.state.record(outcome, ticket, Some(ttfb), now) {
                    choose::log_transition(&backend.state, &t);
                }
                drop((resp, upstream, in_flight));
                trace.try_ended(TryEnd {
                    status: Some(status),
                    error: None,
                });
                failure = Failure::Status(status);
            }
            Tried::Failed { error, unsent } => {
                let Some(f) = Failure::of_error(&error) else {
                    return answer(
                        route,
                        pick.target,
                        Some(pick.backend),
                        &error,
                        started,
                        trace,
                    );
                };
                let retry = match policy {
                    Some(p) => {
                        retry::wants_retry(
                            p,
                            f,
                            &method,
                            replay.is_some() || unsent.is_some(),
                            retries,
                        ) && may_retry(route, pick.target, deadline)
                    }
                    // Without a policy, a request that never reached a backend still gets
                    // another backend (as NGINX's proxy_next_upstream does by default): a dead
                    // backend must not cost requests it never saw.
                    None => {
                        f == Failure::Connect
                            && unsent.is_some()
                            && retries < IMPLICIT_CONNECT_RETRIES
                            && Instant::now() < deadline
                    }
                };
                if !retry {
                    return answer(
                        route,
                        pick.target,
                        Some(pick.backend),
                        &error,
                        started,
                        trace,
                    );
                }
                tracing::debug!(route = %route.spec.name, backend = %backend.state.addr.as_str(), error = %error, "retrying");
                trace.try_ended(TryEnd {
                    status: None,
                    error: Some(error.kind().as_str()),
                });
                next = unsent;
                last = Some((error, pick.target, pick.backend));
                failure = f;
            }
        }
        retries += 1;
        target
            .stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(route = %route.spec.name, ?failure, retries, "retry");
        if next.is_none() {
            next = match (&template, &replay) {
                (Some(head), Some(body)) => Some(Request::from_parts(
                    forward::clone_head(head),
                    ReqBody::full(body.clone()),
                )),
                _ => None,
            };
        }
    }
}

/// Whether time and the budget leave room for another try.
fn may_retry(route: &RouteRuntime, target: usize, deadline: Instant) -> bool {
    if Instant::now() >= deadline {
        return false;
    }
    match &route.budget {
        Some(b) if b.try_withdraw(Instant::now()) => true,
        Some(_) => {
            route.targets[target]
                .stats
                .retries_denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
        None => false,
    }
}

/// The final answer is an error: counted where it belongs and sent.
fn answer(
    route: &RouteRuntime,
    target: usize,
    backend: Option<usize>,
    e: &ProxyError,
    started: Instant,
    trace: RequestTrace,
) -> Response<ProxyBody> {
    let t = &route.targets[target];
    let now = Instant::now();
    t.stats
        .duration
        .record(now.saturating_duration_since(started));
    // The request's outcome on this upstream, as the rollout gates count it; a client's own
    // mistake or departure says nothing about the upstream.
    let outcome = match e.kind() {
        ErrorKind::Connect => Some(Outcome::ConnectFailure),
        ErrorKind::Timeout => Some(Outcome::Timeout),
        ErrorKind::Reset => Some(Outcome::Reset),
        ErrorKind::NoBackend | ErrorKind::Internal => Some(Outcome::ServerError),
        ErrorKind::BadRequest
        | ErrorKind::ClientGone
        | ErrorKind::NoRoute
        | ErrorKind::BodyTooLarge
        | ErrorKind::BodyTooSlow => None,
    };
    if let Some(o) = outcome {
        t.stats.record(o, None, now);
    }
    let resp = error_response(e);
    let status = resp.status().as_u16();
    match backend {
        Some(b) => t.counters[b].record(status),
        None => t.unassigned.record(status),
    }
    tracing::debug!(route = %route.spec.name, upstream = %t.pool.spec.name, error = %e, "request failed");
    let error = e.kind().as_str();
    trace.finish(
        TryEnd {
            status: None,
            error: Some(error),
        },
        Answered {
            status,
            error: Some(error),
            upstream: Some(std::sync::Arc::clone(&t.pool.spec.name)),
        },
    );
    resp
}

/// Reads a body whose length is known and at most [`MAX_REPLAY_BODY`] into memory, so it can be
/// sent again; any other body streams (and is replayable only if it never left).
async fn keep_small(
    body: ReqBody,
    deadline: Instant,
    h2: bool,
    conn: &ConnInfo,
) -> Result<(ReqBody, Option<Bytes>), ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok((ReqBody::empty(), Some(Bytes::new())));
    }
    match body.size_hint().exact() {
        Some(n) if n as usize <= MAX_REPLAY_BODY => {}
        _ => return Ok((body, None)),
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match forward::within(left, h2, conn, body.collect()).await {
        Some(Ok(collected)) => {
            let bytes = collected.to_bytes();
            Ok((ReqBody::full(bytes.clone()), Some(bytes)))
        }
        Some(Err(e)) => Err(body_guard::body_error(e)),
        None => Err(ProxyError::new(
            ErrorKind::BadRequest,
            format!(
                "the request body did not arrive within {:?}",
                Duration::from_secs(left.as_secs())
            ),
        )),
    }
}
