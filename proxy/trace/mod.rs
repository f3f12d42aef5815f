//! Trace context and spans: W3C `traceparent`/`tracestate` passed on to every backend, and,
//! when `tracing.otlp` is set, one server span per request and one client span per try at a
//! backend, exported over OTLP/HTTP off the request path.
//!
//! - [`context`] (pure): `traceparent` and `tracestate` parsed strictly and written.
//! - [`ids`]: new trace and span ids; the sampling decision of a new trace (from its id).
//! - [`span`]: a finished request's spans, as plain data.
//! - [`otlp`] (pure): those spans as an OTLP/HTTP protobuf body.
//! - [`export`]: the bounded queue the request path hands finished requests to (never
//!   waiting: a full queue drops and counts), and the task that batches them to the collector
//!   with retries and backoff, and flushes within a bound on shutdown.
//!
//! A request's [`RequestTrace`] is its place in a trace, kept on the request's record: the
//! caller's trace when the request carried a valid `traceparent` (its sampled flag honoured),
//! else a new trace sampled at `tracing.sample_ratio`. Each try at a backend gets a span id of
//! its own ([`RequestTrace::try_started`]), which the backend sees as its parent. With export
//! off, this is all a request costs: one header parsed, one written per try, and a few random
//! numbers; with `tracing.propagate: false`, nothing at all. The spans themselves are written
//! from the finished record (`http::spans`), not kept along the way.

pub(crate) mod context;
pub(crate) mod export;
pub(crate) mod ids;
pub(crate) mod otlp;
pub(crate) mod span;

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use http::header::{self, HeaderMap, HeaderValue};
use tokio::time::Instant;

pub(crate) use context::{SpanId, TraceId};
pub(crate) use export::{DropReason, Tracer};
use span::{RequestSpans, ServerSpan};

use crate::config::model::Tracing;

/// The ids a request is known by in its trace: what the access log line and the server span
/// carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceIds {
    pub(crate) trace_id: TraceId,
    /// Switchyard's server span: the request as switchyard handled it.
    pub(crate) span_id: SpanId,
}

/// One request's place in its trace, from arrival to the end of its response.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    ids: TraceIds,
    /// The caller's span, when the request carried a valid `traceparent`.
    parent: Option<SpanId>,
    sampled: bool,
    /// Present while the request's spans are to be exported (sampled, `otlp` set).
    recording: Option<Box<Recording>>,
}

/// A recorded request's spans, and where they go when it ends: the box that travels through the
/// export queue, as it is (one allocation per recorded request).
#[derive(Debug)]
pub(crate) struct Recording {
    tracer: Arc<Tracer>,
    queue_size: usize,
    batch_size: usize,
    pub(crate) spans: RequestSpans,
}

impl RequestTrace {
    /// The request's trace: the caller's, or a new one; `None` when `tracing.propagate` is off
    /// (the request's trace headers then pass as they came). It is recorded for export when it
    /// is sampled and `tracing.otlp` is set; `started` is when the request arrived. Without
    /// `carried` (the request has no `traceparent` field at all), no lookup is made for one.
    pub(crate) fn start<B>(
        req: &Request<B>,
        carried: bool,
        peer: SocketAddr,
        scheme: &'static str,
        settings: &Tracing,
        tracer: &Arc<Tracer>,
        started: Instant,
    ) -> Option<RequestTrace> {
        if !settings.propagate {
            return None;
        }
        let headers = req.headers();
        let incoming = match settings.restart_incoming || !carried {
            true => None,
            false => context::parent(headers),
        };
        let (trace_id, parent, sampled) = match incoming {
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
            None => {
                let id = ids::trace_id();
                (id, None, ids::sampled(&id, settings.sample_threshold))
            }
        };
        let span_id = ids::span_id();
        let recording = match &settings.otlp {
            Some(otlp) if sampled => Some(Box::new(Recording {
                tracer: Arc::clone(tracer),
                queue_size: otlp.queue_size,
                batch_size: otlp.batch_size,
                spans: RequestSpans {
                    server: ServerSpan {
                        trace_id,
                        span_id,
                        parent,
                        sampled,
                        trace_state: parent.and_then(|_| context::tracestate(headers)),
                        start: started,
                        end: started,
                        method: req.method().clone(),
                        uri: req.uri().clone(),
                        scheme,
                        version: req.version(),
                        host: req
                            .uri()
                            .authority()
                            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                            .or_else(|| headers.get(header::HOST).cloned()),
                        user_agent: headers.get(header::USER_AGENT).cloned(),
                        peer,
                        status: 0,
                        route: None,
                        upstream: None,
                        backend: None,
                        error: None,
                        flags: None,
                    },
                    tries: Vec::new(),
                },
            })),
            _ => None,
        };
        Some(RequestTrace {
            ids: TraceIds { trace_id, span_id },
            parent,
            sampled,
            recording,
        })
    }

    /// The request's trace id and switchyard's span id for it.
    pub(crate) fn ids(&self) -> TraceIds {
        self.ids
    }

    /// The caller's span, when the request continued a trace.
    #[cfg(test)]
    pub(crate) fn parent(&self) -> Option<SpanId> {
        self.parent
    }

    #[cfg(test)]
    pub(crate) fn sampled(&self) -> bool {
        self.sampled
    }

    /// Whether this request's spans are recorded for export.
    #[cfg(test)]
    pub(crate) fn recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Sets the request head's (the client's, as it came) `tracestate` for what leaves
    /// switchyard: the caller's, checked, when its trace continues; none when the trace
    /// restarted. Each try writes its own `traceparent` ([`RequestTrace::try_started`]); when
    /// the head may also be `copied` (a shadow copy), it gets one naming switchyard's server
    /// span as the parent now, which is what the copy carries. Without `stated` (the head has
    /// no `tracestate` field at all), there is none to check or remove.
    pub(crate) fn propagate(&self, headers: &mut HeaderMap, copied: bool, stated: bool) {
        if copied {
            headers.insert(
                &context::TRACEPARENT,
                context::traceparent(&self.ids.trace_id, &self.ids.span_id, self.sampled),
            );
        }
        if !stated {
            return;
        }
        if self.parent.is_some() {
            context::settle_tracestate(headers);
        } else {
            headers.remove(&context::TRACESTATE);
        }
    }

    /// A try is about to be sent with `headers`: it gets a span of its own, which its
    /// `traceparent` names as the backend's parent. The try's record keeps the id.
    pub(crate) fn try_started(&self, headers: &mut HeaderMap) -> SpanId {
        let span_id = ids::span_id();
        headers.insert(
            &context::TRACEPARENT,
            context::traceparent(&self.ids.trace_id, &span_id, self.sampled),
        );
        span_id
    }

    /// The spans to write once the request is over, if they are recorded (once).
    pub(crate) fn take_recording(&mut self) -> Option<Box<Recording>> {
        self.recording.take()
    }
}

impl Recording {
    /// Hands the finished spans to the export queue (never waits).
    pub(crate) fn submit(self: Box<Self>) {
        let tracer = Arc::clone(&self.tracer);
        let (queue_size, batch_size) = (self.queue_size, self.batch_size);
        tracer.submit(self, queue_size, batch_size);
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
