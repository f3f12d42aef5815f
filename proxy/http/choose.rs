//! Which backend takes a try: the split's target first, then a healthy, admitted backend in it;
//! when the target has none, another target of the route in the split's relative weights (a
//! dead canary's share goes to stable); when nothing is left, a 503 at once.

use http::Request;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{headers, pick};
use crate::backend::breaker::Transition;
use crate::backend::state::Ticket;
use crate::backend::{Backend, BackendState};
use crate::config::model::StickyKey;
use crate::error::{ErrorKind, ProxyError};
use crate::reload::snapshot::{Pool, RouteRuntime};

/// How the split pointed a request, worked out once and kept for its retries.
pub struct Aim {
    pub target: usize,
    pub sticky: Option<bytes::Bytes>,
    pub seq: u64,
    /// Forced by the override header: never rerouted.
    pub forced: bool,
}

impl Aim {
    pub fn new(route: &RouteRuntime, req: &Request<Incoming>) -> Aim {
        let spec = &route.spec;
        let forced = spec.override_header.as_ref().and_then(|name| {
            let wanted = req.headers().get(name)?.as_bytes();
            route
                .targets
                .iter()
                .position(|t| t.pool.spec.name.as_bytes() == wanted)
        });
        let sticky = sticky_key(route, req);
        let seq = route.next_seq();
        let target = forced.unwrap_or_else(|| match &sticky {
            Some(key) => route.split.pick_sticky(key),
            None => route.split.pick(seq),
        });
        Aim {
            target,
            sticky,
            seq,
            forced: forced.is_some(),
        }
    }
}

fn sticky_key(route: &RouteRuntime, req: &Request<Incoming>) -> Option<bytes::Bytes> {
    let key = match route.spec.sticky.as_ref()? {
        StickyKey::Header(name) => req.headers().get(name).map(|v| v.as_bytes()),
        StickyKey::Cookie(name) => headers::cookie(req.headers(), name),
    }?;
    (!key.is_empty()).then(|| bytes::Bytes::copy_from_slice(key))
}

/// One try's destination.
pub struct Pick {
    pub target: usize,
    pub backend: usize,
    pub ticket: Ticket,
}

/// Picks a backend for the next try. `tried(target, backend)` excludes backends already tried.
pub fn choose(
    route: &RouteRuntime,
    aim: &Aim,
    tried: &dyn Fn(usize, usize) -> bool,
    now: Instant,
) -> Result<Pick, ProxyError> {
    let first = aim.target;
    if let Some((backend, ticket)) = pick_in(&route.targets[first].pool, &|b| tried(first, b), now)
    {
        return Ok(Pick {
            target: first,
            backend,
            ticket,
        });
    }
    if !aim.forced {
        let usable = |t: usize| {
            t != first
                && route.targets[t]
                    .pool
                    .backends
                    .iter()
                    .enumerate()
                    .any(|(b, backend)| !tried(t, b) && backend.state.available(now))
        };
        if let Some(t) = route
            .split
            .pick_among(aim.seq, aim.sticky.as_deref(), usable)
            && let Some((backend, ticket)) = pick_in(&route.targets[t].pool, &|b| tried(t, b), now)
        {
            route.targets[first]
                .stats
                .rerouted_away
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            route.targets[t]
                .stats
                .rerouted_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Pick {
                target: t,
                backend,
                ticket,
            });
        }
    }
    let pool = &route.targets[first].pool;
    let why = if pool.backends.is_empty() {
        // Only a discovered upstream can be empty: its name has not resolved yet.
        format!(
            "upstream `{}` of route `{}` has no backends: its DNS name has not resolved to any address yet",
            pool.spec.name, route.spec.name
        )
    } else {
        format!(
            "no backend of route `{}` can take the request: every one is unhealthy or its circuit breaker is open",
            route.spec.name
        )
    };
    Err(ProxyError::new(ErrorKind::NoBackend, why))
}

/// A backend of `pool` not excluded, healthy and admitted by its breaker. Past the pool's panic
/// threshold (more than that share out, but not all), every backend is fair game again, so that
/// a partial outage does not pile everything onto the few left.
pub(crate) fn pick_in(
    pool: &Pool,
    excluded: &dyn Fn(usize) -> bool,
    now: Instant,
) -> Option<(usize, Ticket)> {
    let backends = &pool.backends;
    let n = backends.len();
    if n == 0 {
        return None;
    }
    let in_flight = |i: usize| backends[i].state.in_flight();
    let ok = |i: usize| !excluded(i) && backends[i].state.available(now);
    // The common case: both candidates are fine; no need to look at the rest of the pool.
    let (a, b) = pick::two_choices(n, pool.next_rr(), pick::fast_random());
    if ok(a) && ok(b) {
        let i = pick::less_loaded(a, b, in_flight);
        let ticket = admit(&backends[i], now);
        if !ticket.is_refused() {
            return Some((i, ticket));
        }
    }
    if panic_mode(pool, excluded, now) {
        let i = pick::pick(n, pool.next_rr(), pick::fast_random(), in_flight, |i| {
            !excluded(i) && !backends[i].state.is_pending()
        })?;
        return Some((i, Ticket::unchecked()));
    }
    // Breakers that refuse (half-open and full of probes) are skipped on the next round.
    let mut refused: Vec<usize> = Vec::new();
    for _ in 0..n {
        let usable = |i: usize| ok(i) && !refused.contains(&i);
        let i = pick::pick(n, pool.next_rr(), pick::fast_random(), in_flight, usable)?;
        let ticket = admit(&backends[i], now);
        if !ticket.is_refused() {
            return Some((i, ticket));
        }
        refused.push(i);
    }
    None
}

/// More than the pool's threshold of the backends still in play are out (but not all of them).
/// Pods not yet checked are not in play: they are not out, they are not in yet.
fn panic_mode(pool: &Pool, excluded: &dyn Fn(usize) -> bool, now: Instant) -> bool {
    let threshold = u64::from(pool.spec.panic_threshold);
    if threshold >= 100 {
        return false;
    }
    let (mut considered, mut out) = (0u64, 0u64);
    for (i, b) in pool.backends.iter().enumerate() {
        if !excluded(i) && !b.state.is_pending() {
            considered += 1;
            out += u64::from(!b.state.available(now));
        }
    }
    out > 0 && out < considered && out * 100 > considered * threshold
}

fn admit(backend: &Backend, now: Instant) -> Ticket {
    let (ticket, transition) = backend.state.admit(now);
    if let Some(t) = transition {
        log_transition(&backend.state, &t);
    }
    ticket
}

/// Breaker transitions go to the log with the upstream and the backend.
pub fn log_transition(state: &BackendState, t: &Transition) {
    let (upstream, backend) = (&*state.upstream, state.addr.as_str());
    match t {
        Transition::Opened { reason, open_for } => {
            tracing::warn!(upstream, backend, %reason, ?open_for, "circuit breaker opened")
        }
        Transition::HalfOpened => {
            tracing::info!(upstream, backend, "circuit breaker half-open: probing")
        }
        Transition::Closed => tracing::info!(upstream, backend, "circuit breaker closed"),
    }
}
