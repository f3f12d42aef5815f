//! One routed request, over as many tries as its route allows. An [`Attempt`] holds what the
//! tries share (the route, where the split aimed, the deadline, the backends tried, what it
//! takes to send the request again) and decides, try by try, where the next one goes
//! ([`Attempt::next_pick`]) and whether a failed one may go again ([`Attempt::may_retry`]).
//! Each try's end is classified once ([`classify`]); everything after reads that verdict.
//!
//! A try goes to another backend of the aimed upstream, never the same one while another is
//! available; when none is left, to another upstream of the route in the split's relative
//! weights (a dead canary's share goes to stable); when nothing is left, a 503 at once. A
//! request that meets a kept-alive connection the backend had closed goes again on a fresh
//! connection to the same backend when that is safe, without needing `retries:`.

pub(crate) mod aim;
pub(crate) mod send;
#[cfg(test)]
mod tests;
mod tried;

use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use self::aim::Aim;
use self::send::Sender;
use self::tried::Tried;
use super::classify::{self, Class, Failure, Retry, Rules, SendFailure};
use super::grpc::GrpcEnd;
use super::headers::clone_head;
use super::record::{Flags, Record, TryRecord};
use crate::backend::InFlight;
use crate::backend::state::Ticket;
use crate::body::ReqBody;
use crate::body::limits::{BodyLimitError, Guarded, body_error};
use crate::config::model::RetryPolicy;
use crate::config::resilience::MAX_REPLAY_BODY;
use crate::error::{ErrorKind, ProxyError};
use crate::routing::{BackendRef, RouteRuntime};
use crate::server::conn::{ConnInfo, Timer};
use crate::stats::counters::LocalErrors;

pub(crate) struct Attempt<'a> {
    route: &'a RouteRuntime,
    aim: Aim,
    /// The route's timeout, from when the request was sent on its way.
    deadline: Instant,
    timer: Timer<'a>,
    policy: Option<&'a RetryPolicy>,
    idempotent: bool,
    /// Retries made (fresh-connection resends are not retries).
    retries: u32,
    /// Resends after a connection opened for this request refused it unprocessed.
    refused_again: u32,
    tried: Tried,
    /// What sending the request again takes, when it can be.
    replay: Option<Replay>,
    /// The last failure, answered when no other backend is left for an implicit retry.
    last_error: Option<(ProxyError, BackendRef)>,
    /// Where the proxy's own shortages are counted.
    shortages: &'a LocalErrors,
    pub(crate) record: Box<Record>,
}

/// A request as it can be built again: its prepared head and its whole body.
struct Replay {
    head: Parts,
    body: Bytes,
}

/// A try that got a response head, which the client is given.
pub(crate) struct Answered<B, C> {
    pub(crate) resp: Response<B>,
    pub(crate) conn: C,
    pub(crate) at: BackendRef,
    pub(crate) ticket: Ticket,
    pub(crate) in_flight: InFlight,
    pub(crate) ttfb: Duration,
    /// What the response head says of a gRPC status.
    pub(crate) grpc: GrpcEnd,
}

impl<'a> Attempt<'a> {
    pub(crate) fn new(
        route: &'a RouteRuntime,
        aim: Aim,
        deadline: Instant,
        timer: Timer<'a>,
        method: &Method,
        shortages: &'a LocalErrors,
        mut record: Box<Record>,
    ) -> Attempt<'a> {
        record.aimed = Some(aim.target);
        // Every request deposits into its route's retry budget as it starts.
        if let Some(budget) = &route.budget {
            budget.deposit(record.started);
        }
        Attempt {
            route,
            aim,
            deadline,
            timer,
            policy: route.spec.retries.as_ref(),
            idempotent: classify::is_idempotent(method),
            retries: 0,
            refused_again: 0,
            tried: Tried::default(),
            replay: None,
            last_error: None,
            shortages,
            record,
        }
    }

    /// The target the split aimed at.
    pub(crate) fn aimed(&self) -> usize {
        self.aim.target
    }

    /// Keeps a copy of the prepared head and the whole body, so that a failed try can be sent
    /// again (before the first try).
    fn keep_for_replay(&mut self, head: &Parts, body: Bytes) {
        self.replay = Some(Replay {
            head: clone_head(head),
            body,
        });
    }

    fn rules(&self) -> Rules<'a> {
        Rules {
            policy: self.policy,
            idempotent: self.idempotent,
            replayable: self.replay.is_some(),
            retries: self.retries,
            refused_again: self.refused_again,
        }
    }

    /// The request again, for another try.
    fn rebuild(&self) -> Option<Request<ReqBody>> {
        let r = self.replay.as_ref()?;
        Some(Request::from_parts(
            clone_head(&r.head),
            ReqBody::full(r.body.clone()),
        ))
    }

    /// When the next try must have its response head: the route's deadline, or sooner by the
    /// policy's `per_try_timeout`.
    fn try_deadline(&self, now: Instant) -> Instant {
        match self.policy.and_then(|p| p.per_try_timeout) {
            Some(t) => self.deadline.min(now + t),
            None => self.deadline,
        }
    }

    /// The backend for the next try: one not tried yet if there is one; the same one again only
    /// if nothing else is left, and only for a route that asked for retries.
    pub(crate) fn next_pick(&mut self, now: Instant) -> Result<(BackendRef, Ticket), ProxyError> {
        let tried = &self.tried;
        let picked = self.choose(now, &|t, b| tried.contains(t, b)).or_else(|| {
            // A backend tried before: only for a route that asked for retries.
            (self.policy.is_some() && !self.tried.is_empty())
                .then(|| self.choose(now, &|_, _| false))
                .flatten()
        });
        if let Some((at, ticket)) = picked {
            self.tried.add(at);
            return Ok((at, ticket));
        }
        // Without a policy, the last try's own failure is the answer (an implicit retry found
        // nothing else to try); otherwise nothing could take the request at all.
        if self.policy.is_none()
            && let Some((e, at)) = self.last_error.take()
        {
            self.record.charge(at.target(), Some(at.index()));
            return Err(e);
        }
        self.record.charge(self.aim.target, None);
        let upstream = &self.route.targets[self.aim.target].upstream;
        let why = if upstream.backends.is_empty() {
            // Only a discovered upstream can be empty: its name has not resolved yet.
            format!(
                "upstream `{}` of route `{}` has no backends: its DNS name has not resolved to any address yet",
                upstream.spec.name, self.route.spec.name
            )
        } else {
            format!(
                "no backend of route `{}` can take the request: every one is unhealthy or its circuit breaker is open",
                self.route.spec.name
            )
        };
        Err(ProxyError::new(ErrorKind::NoBackend, why))
    }

    /// A backend for a try: the aimed upstream first, then another upstream of the route (a
    /// reroute, counted on both sides) unless the override header forced the aim.
    fn choose(
        &self,
        now: Instant,
        excluded: &dyn Fn(usize, usize) -> bool,
    ) -> Option<(BackendRef, Ticket)> {
        let route = self.route;
        let first = self.aim.target;
        if let Some((b, ticket)) = route.targets[first]
            .upstream
            .pick(&|b| excluded(first, b), now)
        {
            return Some((BackendRef::new(first, b), ticket));
        }
        if self.aim.forced {
            return None;
        }
        let usable = |t: usize| {
            t != first
                && route.targets[t]
                    .upstream
                    .any_available(&|b| excluded(t, b), now)
        };
        let t = route
            .split
            .pick_among(self.aim.seq, self.aim.sticky.as_deref(), usable)?;
        let (b, ticket) = route.targets[t].upstream.pick(&|b| excluded(t, b), now)?;
        route.targets[first].stats.rerouted_away();
        route.targets[t].stats.rerouted_in();
        Some((BackendRef::new(t, b), ticket))
    }

    /// Whether time (and, under a policy, the retry budget) leaves room for the retry a failed
    /// try at `at` asks for.
    pub(crate) fn may_retry(&mut self, retry: Retry, at: BackendRef) -> bool {
        if retry == Retry::No {
            return false;
        }
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        if self.policy.is_none() {
            // The implicit retry of a request that never reached a backend costs no budget.
            return retry == Retry::Another(Failure::Connect);
        }
        match &self.route.budget {
            Some(b) if b.try_withdraw(now) => true,
            Some(_) => {
                self.route.targets[at.target()].stats.retry_denied();
                false
            }
            None => false,
        }
    }

    fn retried(&mut self, at: BackendRef, class: Class) {
        self.retries += 1;
        self.route.targets[at.target()].stats.retried();
        tracing::debug!(route = %self.route.spec.name, ?class, retries = self.retries, "retry");
    }

    /// Sends the request, trying again as the route allows, until a response head the client
    /// gets or an error it gets instead.
    pub(crate) async fn run<S: Sender>(
        &mut self,
        sender: &S,
        first: Request<ReqBody>,
    ) -> Result<Answered<S::Body, S::Conn>, ProxyError> {
        // Whether the prepared head lacks a `Host` (HTTP/1.0): then each try names its backend.
        // Asked once: every try's head is a copy of this one.
        let unnamed = !first.headers().contains_key(http::header::HOST);
        let mut next = Some(first);
        // A resend on a fresh connection goes to the backend of the try it repeats, on its
        // ticket (the closed connection told the breaker nothing).
        let mut resend: Option<(BackendRef, Ticket)> = None;
        loop {
            let Some(mut req) = next.take() else {
                return Err(ProxyError::new(
                    ErrorKind::Internal,
                    "no request left to send",
                ));
            };
            let sent_at = Instant::now();
            let fresh = resend.is_some();
            let (at, ticket) = match resend.take() {
                Some(r) => r,
                None => self.next_pick(sent_at)?,
            };
            let backend = self.route.backend(at);
            if unnamed {
                name_backend(&mut req, backend.state.addr.as_str());
            }
            // Each try is a span of its own: the backend sees it as its parent.
            let span = self
                .record
                .trace
                .as_ref()
                .map(|t| t.try_started(req.headers_mut()));
            let in_flight = InFlight::start(&backend.state);
            let until = self.try_deadline(sent_at);
            let sent = self
                .timer
                .until(
                    until,
                    std::pin::pin!(sender.send(backend, req, fresh, sent_at)),
                )
                .await;
            let rules = self.rules();
            let mut tried = TryRecord {
                backend: at,
                sent: sent_at,
                ttfb: None,
                class: Class::Timeout,
                status: None,
                version: None,
                resent: false,
                span,
            };
            // The try failed on a connection opened for it (not one kept alive).
            let mut on_new = false;
            let (verdict, error, unsent) = match sent {
                Some(Ok(crate::backend::pool::Sent { resp, conn })) => {
                    let ttfb = sent_at.elapsed();
                    let status = resp.status().as_u16();
                    let grpc = GrpcEnd::of_head(resp.headers());
                    let failures = self.route.targets[at.target()].upstream.spec.grpc_failures;
                    let v = classify::answered(status, grpc, failures, &rules);
                    tried.ttfb = Some(ttfb);
                    tried.status = Some(status);
                    tried.version = Some(resp.version());
                    tried.class = v.class;
                    self.record.tried(tried);
                    if !self.may_retry(v.retry, at) {
                        return Ok(Answered {
                            resp,
                            conn,
                            at,
                            ticket,
                            in_flight,
                            ttfb,
                            grpc,
                        });
                    }
                    // Settled now: the body is never read; its connection closes with it.
                    match v.class.backend_outcome() {
                        Some(o) => backend.state.record(o, ticket, Some(ttfb), Instant::now()),
                        None => drop(ticket),
                    }
                    drop((resp, conn, in_flight));
                    self.retried(at, v.class);
                    next = self.rebuild();
                    continue;
                }
                Some(Err(f)) => {
                    on_new = !f.reused;
                    let sf = SendFailure {
                        error: &f.error,
                        reused: f.reused,
                        unsent: f.unsent.is_some(),
                    };
                    let v = classify::failed(&sf, &rules);
                    let e = classify::error(
                        &sf,
                        v.class,
                        &backend.state.upstream,
                        backend.state.addr.as_str(),
                    );
                    (v, e.with_source(f.error), f.unsent.map(|r| *r))
                }
                None => {
                    let e = ProxyError::timeout(
                        &backend.state.upstream,
                        until.saturating_duration_since(sent_at),
                    )
                    .with_detail(backend.state.addr.as_str());
                    (classify::timed_out(&rules), e, None)
                }
            };
            drop(in_flight);
            tried.class = verdict.class;
            if verdict.retry == Retry::Fresh && Instant::now() < self.deadline {
                tried.resent = true;
                self.record.tried(tried);
                if verdict.class == Class::Refused {
                    if on_new {
                        self.refused_again += 1;
                    }
                    backend.state.resent_refused();
                } else {
                    backend.state.resent_stale();
                }
                tracing::debug!(backend = %backend.state.addr.as_str(), error = %error, "kept-alive connection was closed or refused the request unprocessed; sending again on a fresh one");
                resend = Some((at, ticket));
                next = unsent.or_else(|| self.rebuild());
                continue;
            }
            self.record.tried(tried);
            self.record.flags.set(Flags::of_class(verdict.class));
            if let Class::Shortage(s) = verdict.class {
                self.shortages.count(s);
                tracing::warn!(backend = %backend.state.addr.as_str(), error = %error, "out of resources connecting to a backend; not counted against it");
            }
            match verdict.class.backend_outcome() {
                Some(o) => backend.state.record(o, ticket, None, Instant::now()),
                // Nothing to say about the backend: its ticket goes back unused.
                None => drop(ticket),
            }
            if !self.may_retry(verdict.retry, at) {
                return Err(error);
            }
            tracing::debug!(route = %self.route.spec.name, backend = %backend.state.addr.as_str(), error = %error, "retrying");
            self.retried(at, verdict.class);
            self.last_error = Some((error, at));
            next = unsent.or_else(|| self.rebuild());
        }
    }
}

/// HTTP/1.0 without a `Host`: name the backend, as a direct client would.
fn name_backend(req: &mut Request<ReqBody>, addr: &str) {
    if !req.headers().contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(addr)
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
}

/// Prepares the request's body for its tries: under the listener's limits, and kept whole
/// when another try may need it (the route retries and the body is small, or the body is
/// empty and the method idempotent, for a resend on a fresh connection).
pub(crate) async fn prepare_body(
    attempt: &mut Attempt<'_>,
    head: &Parts,
    body: Incoming,
    conn: &ConnInfo,
    upgrade: bool,
) -> Result<(ReqBody, Option<Bytes>), ProxyError> {
    let body = guard(body, head, conn, attempt.timer, attempt.deadline).await?;
    if upgrade {
        return Ok((body, None));
    }
    // An HTTP/2 backend may refuse a request unprocessed (GOAWAY) whatever its method: a small
    // body is kept so that it can go again.
    let multiplexed = attempt.route.targets[attempt.aim.target]
        .upstream
        .spec
        .transport
        .protocol
        != crate::config::model::Protocol::Http1;
    let kept = if attempt.policy.is_some() || multiplexed {
        keep_small(body, attempt.deadline, attempt.timer).await?
    } else if attempt.idempotent && http_body::Body::is_end_stream(&body) {
        (body, Some(Bytes::new()))
    } else {
        (body, None)
    };
    if let Some(bytes) = &kept.1 {
        attempt.keep_for_replay(head, bytes.clone());
    }
    Ok(kept)
}

/// Puts a streaming body under the listener's limits and, for a chunked or HTTP/2 body, reads
/// its first frame (by the deadline) so that a body broken from the start reaches no backend.
/// Not for gRPC: in a bidirectional call the server may speak first, and the client then
/// sends nothing until it has.
async fn guard(
    body: Incoming,
    head: &Parts,
    conn: &ConnInfo,
    timer: Timer<'_>,
    deadline: Instant,
) -> Result<ReqBody, ProxyError> {
    use http_body::Body as _;
    let prime = (head.version == http::Version::HTTP_2 || body.size_hint().exact().is_none())
        && !super::grpc::is_grpc(&head.headers);
    let mut g = match Guarded::new(body, &conn.limits.spec, &conn.limits.counters, prime) {
        Ok(g) => g,
        Err(plain) => return Ok(ReqBody::Streaming(plain)),
    };
    if prime {
        match timer.until(deadline, std::pin::pin!(g.prime())).await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(BodyLimitError::TooSlow.to_proxy_error()),
        }
    }
    Ok(ReqBody::Guarded(Box::new(g)))
}

/// Reads a body whose length is known and at most [`MAX_REPLAY_BODY`] into memory, so it can be
/// sent again; any other body streams (and is replayable only if it never left).
async fn keep_small(
    body: ReqBody,
    deadline: Instant,
    timer: Timer<'_>,
) -> Result<(ReqBody, Option<Bytes>), ProxyError> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return Ok((ReqBody::empty(), Some(Bytes::new())));
    }
    match body.size_hint().exact() {
        Some(n) if n as usize <= MAX_REPLAY_BODY => {}
        _ => return Ok((body, None)),
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match timer.until(deadline, std::pin::pin!(body.collect())).await {
        Some(Ok(collected)) => {
            let bytes = collected.to_bytes();
            Ok((ReqBody::full(bytes.clone()), Some(bytes)))
        }
        Some(Err(e)) => Err(body_error(e)),
        None => Err(ProxyError::new(
            ErrorKind::BadRequest,
            format!(
                "the request body did not arrive within {:?}",
                Duration::from_secs(left.as_secs())
            ),
        )),
    }
}
