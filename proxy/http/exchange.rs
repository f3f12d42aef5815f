//! The end of a request. Every response, a backend's or switchyard's own, carries an
//! [`Exchange`] in its body; when the body has been sent (or the client left), the exchange
//! finishes the request's record exactly once: the last try's class is completed by how its
//! body ended, the backend's breaker and statistics and the route's numbers are told, the
//! connection goes back to its pool if the response was read to its end, and the record is
//! written out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::access;
use super::classify::{self, Class};
use super::grpc::{self, GrpcEnd};
use super::record::{Flags, Record};
use super::shadow::PrimaryTap;
use crate::backend::InFlight;
use crate::backend::pool::Conn;
use crate::backend::state::Ticket;
use crate::body::{BodyEnd, BodyGuard, RespBody};
use crate::error::ErrorKind;
use crate::routing::{BackendRef, Snapshot};

pub(crate) type ProxyBody = RespBody<Exchange>;

pub(crate) struct Exchange {
    /// The snapshot the request was routed by (`None` when it was refused before that).
    snap: Option<Arc<Snapshot>>,
    record: Record,
    /// The answering try, while its response streams.
    upstream: Option<Upstream>,
    /// Everything was counted already (an upgraded connection, counted when it upgraded).
    settled: bool,
}

/// What the answering try holds until its response has been sent.
pub(crate) struct Upstream {
    pub(crate) at: BackendRef,
    pub(crate) conn: Conn,
    /// Counts the request in flight to its backend until the response ends.
    pub(crate) in_flight: InFlight,
    pub(crate) ticket: Ticket,
    pub(crate) ttfb: Duration,
    /// The copy of the response a shadow comparison waits for.
    pub(crate) compare: Option<Box<PrimaryTap>>,
    /// A gRPC response's status, once it has arrived.
    pub(crate) grpc: GrpcEnd,
}

impl Exchange {
    /// A backend's response, streaming.
    pub(crate) fn upstream(snap: Arc<Snapshot>, record: Record, up: Upstream) -> Exchange {
        Exchange {
            snap: Some(snap),
            record,
            upstream: Some(up),
            settled: false,
        }
    }

    /// Switchyard's own answer.
    pub(crate) fn local(snap: Option<Arc<Snapshot>>, record: Record) -> Exchange {
        Exchange {
            snap,
            record,
            upstream: None,
            settled: false,
        }
    }

    /// A response whose numbers were counted already.
    pub(crate) fn settled(snap: Arc<Snapshot>, record: Record) -> Exchange {
        Exchange {
            snap: Some(snap),
            record,
            upstream: None,
            settled: true,
        }
    }

    fn end(mut self, end: BodyEnd) {
        let now = Instant::now();
        let record = &mut self.record;
        record.duration = now.saturating_duration_since(record.started);
        if end == BodyEnd::Dropped {
            record.flags.set(Flags::DOWNSTREAM_DISCONNECT);
        }
        if let (false, Some(snap), Some(r)) = (self.settled, &self.snap, record.route) {
            let route = &snap.routes[r];
            match self.upstream.take() {
                Some(up) => {
                    let failures = route.targets[up.at.target()].upstream.spec.grpc_failures;
                    let class = classify::body_ended(record.status, end, up.grpc, failures);
                    if let Some(t) = record.last_try() {
                        t.class = class;
                    }
                    if class == Class::Reset {
                        record.flags.set(Flags::UPSTREAM_RESET);
                    }
                    if let (BodyEnd::Complete, Some(c)) = (end, up.compare) {
                        c.finish();
                    }
                    let backend = route.backend(up.at);
                    let outcome = class.backend_outcome();
                    match outcome {
                        Some(o) => backend.state.record(o, up.ticket, Some(up.ttfb), now),
                        None => drop(up.ticket),
                    }
                    let stats = &route.targets[up.at.target()].stats;
                    stats.answered(outcome, Some(up.ttfb), record.duration, now);
                    if record.grpc {
                        stats.grpc_answered(match up.grpc {
                            GrpcEnd::Status(c) => Some(c),
                            GrpcEnd::Pending | GrpcEnd::NotGrpc => None,
                        });
                    }
                    drop(up.in_flight);
                    if end == BodyEnd::Complete {
                        backend.pool.checkin(up.conn, now);
                    }
                }
                None => {
                    if let Some(t) = record.target {
                        let outcome = classify::local_answer(record.error, record.status);
                        let stats = &route.targets[t].stats;
                        stats.answered(outcome, None, record.duration, now);
                        if record.grpc {
                            let timeout = record.error == Some(ErrorKind::Timeout);
                            stats.grpc_answered(Some(grpc::code_for(record.status, timeout)));
                        }
                    }
                }
            }
        }
        super::spans::finish(&mut self.record, self.snap.as_deref(), now);
        self.log();
        if let Some(line) = self.record.access.take() {
            access::finish(line, &self.record, self.snap.as_deref());
        }
    }

    /// The request's line in the debug log (`RUST_LOG=switchyard::request=debug`).
    fn log(&self) {
        if !tracing::enabled!(target: "switchyard::request", tracing::Level::DEBUG) {
            return;
        }
        let r = &self.record;
        let ids = r.trace_ids();
        let route = self
            .snap
            .as_ref()
            .zip(r.route)
            .map(|(s, i)| &*s.routes[i].spec.name);
        let upstream = self
            .snap
            .as_ref()
            .zip(r.route)
            .zip(r.target)
            .map(|((s, i), t)| &*s.routes[i].targets[t].upstream.spec.name);
        tracing::debug!(
            target: "switchyard::request",
            method = %r.method,
            version = ?r.version,
            status = r.status,
            route,
            upstream,
            attempts = r.attempts(),
            flags = %r.flags,
            duration_ms = r.duration.as_secs_f64() * 1e3,
            upstream_ms = r.upstream_time().map(|t| t.as_secs_f64() * 1e3),
            // Time before the last try went out: an injected delay, the body's first bytes,
            // earlier tries.
            waited_ms = r.last.map(|t| t.sent.saturating_duration_since(r.started).as_secs_f64() * 1e3),
            bytes_sent = r.bytes_sent,
            trace_id = ids.map(|i| tracing::field::display(i.trace_id)),
            span_id = ids.map(|i| tracing::field::display(i.span_id)),
            "request"
        );
    }
}

impl BodyGuard for Exchange {
    fn data(&mut self, chunk: &Bytes) {
        self.record.bytes_sent += chunk.len() as u64;
        if let Some(c) = self.upstream.as_mut().and_then(|u| u.compare.as_mut()) {
            c.data(chunk);
        }
    }

    fn finish(self, end: BodyEnd) {
        self.end(end);
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(up) = self.upstream.as_mut() {
            up.grpc.trailers(trailers);
        }
    }
}
