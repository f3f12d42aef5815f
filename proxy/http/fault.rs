//! Serves a route's injected faults (decided by `routing::fault`): waits out a delay before the
//! request is sent, answers an abort without contacting any backend, and labels the response.
//!
//! Accounting: an abort never reaches a backend. It counts as the upstream's response in the
//! route's statistics (`switchyard_requests_total` with backend "", the rollout gates' error
//! rate: a rehearsed canary failure must trip the gates as a real one would), but never in any
//! backend's breaker: a breaker judges one backend's health, an injected fault says nothing
//! about it, and opening breakers on healthy backends would reroute the faulted share to
//! other upstreams, hiding the rehearsed failure from the gates and outliving the fault.
//! A delay is served before the request is sent, and does not count against the route's
//! timeout (as Envoy's fault filter runs before its router).

use http::header::HeaderValue;
use http::{Response, StatusCode};

use super::attempt::aim::Aim;
use super::record::{Flags, Record};
use crate::routing::RouteRuntime;

pub(crate) const HEADER: &str = "x-switchyard-fault";

/// Applies the route's fault to a request just aimed: waits out a delay; `Some(status)` when
/// an abort is to be answered instead. Both are noted in the record.
pub(crate) async fn inject(
    route: &RouteRuntime,
    aim: &Aim,
    record: &mut Record,
) -> Option<StatusCode> {
    let fault = route.fault.as_ref()?;
    let injected = fault.decide(aim.target);
    let upstream = &route.targets[aim.target].upstream.spec.name;
    if let Some(d) = injected.delay {
        record.flags.set(Flags::FAULT_DELAY);
        tracing::debug!(route = %route.spec.name, %upstream, fault = "delay", delay = ?d, "fault injected");
        tokio::time::sleep(d).await;
    }
    let status = injected.abort?;
    record.flags.set(Flags::FAULT_ABORT);
    record.charge(aim.target, None);
    tracing::debug!(route = %route.spec.name, %upstream, fault = "abort", status = status.as_u16(), "fault injected");
    Some(status)
}

/// Marks a response that had a fault injected: `x-switchyard-fault: delay`, `abort` or both.
pub(crate) fn label<B>(resp: &mut Response<B>, flags: Flags) {
    let value = match (flags.has(Flags::FAULT_DELAY), flags.has(Flags::FAULT_ABORT)) {
        (false, false) => return,
        (true, false) => "delay",
        (false, true) => "abort",
        (true, true) => "delay, abort",
    };
    resp.headers_mut()
        .insert(HEADER, HeaderValue::from_static(value));
}
