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
//! A request's [`RequestTrace`] is its place in a trace: the caller's trace when the request
//! carried a valid `traceparent` (its sampled flag honoured), else a new trace sampled at
//! `tracing.sample_ratio`. Each try at a backend gets a span id of its own, which the backend
//! sees as its parent. With export off, this is all a request costs: one header parsed, one
//! written per try, and a few random numbers.

pub mod context;
pub mod export;
pub mod ids;
pub mod otlp;
pub mod span;

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use http::header::{self, HeaderMap, HeaderValue};

pub use context::{SpanId, TraceId};
pub use export::{DropReason, Tracer};
use span::{ClientSpan, RequestSpans, ServerSpan, now_ns};

use crate::config::model::{BackendAddr, Tracing};

/// One request's place in its trace, from arrival to the end of its response.
#[derive(Debug)]
pub struct RequestTrace {
    trace_id: TraceId,
    /// The request as switchyard handles it (the server span): what the access log names.
    span_id: SpanId,
    /// The caller's span, when the request carried a valid `traceparent`.
    parent: Option<SpanId>,
    sampled: bool,
    /// Present while the request's spans are being recorded for export.
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
    /// The try in progress: its span, until it ends.
    open: Option<ClientSpan>,
}

/// How a try ended, for its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryEnd {
    /// The response head's status, when one came.
    pub status: Option<u16>,
    /// What went wrong (`x-switchyard-error`'s tokens), when something did.
    pub error: Option<&'static str>,
}

impl TryEnd {
    /// No try is open, or it ends as its response did.
    pub const NONE: TryEnd = TryEnd {
        status: None,
        error: None,
    };
}

/// How the request was answered, for the server span.
#[derive(Debug, Default)]
pub struct Answered {
    pub status: u16,
    /// Why switchyard answered itself (`x-switchyard-error`'s token), when it did.
    pub error: Option<&'static str>,
    /// The upstream it was counted against when no try named one (every backend was out).
    pub upstream: Option<Arc<str>>,
}

impl RequestTrace {
    /// The request's trace: the caller's, or a new one. It is recorded for export when it is
    /// sampled and `tracing.otlp` is set.
    pub fn start<B>(
        req: &Request<B>,
        peer: SocketAddr,
        scheme: &'static str,
        settings: &Tracing,
        tracer: &Arc<Tracer>,
    ) -> RequestTrace {
        let headers = req.headers();
        let incoming = match settings.restart_incoming {
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
                        start_ns: now_ns(),
                        end_ns: 0,
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
                    },
                    tries: Vec::new(),
                },
                open: None,
            })),
            _ => None,
        };
        RequestTrace {
            trace_id,
            span_id,
            parent,
            sampled,
            recording,
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The request's own span (switchyard's server span).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The caller's span, when the request continued a trace.
    pub fn parent(&self) -> Option<SpanId> {
        self.parent
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Whether this request's spans are recorded for export.
    pub fn recording(&self) -> bool {
        self.recording.is_some()
    }

    /// The request matched `route`.
    pub fn routed(&mut self, route: &Arc<str>) {
        if let Some(rec) = &mut self.recording {
            rec.spans.server.route = Some(Arc::clone(route));
        }
    }

    /// Sets the request head's (the client's, as it came) `tracestate` for what leaves
    /// switchyard: the caller's, checked, when its trace continues; none when the trace
    /// restarted. Each try writes its own `traceparent` ([`RequestTrace::try_started`]); when
    /// the head may also be `copied` (a shadow copy), it gets one naming switchyard's server
    /// span as the parent now, which is what the copy carries.
    pub fn propagate(&self, headers: &mut HeaderMap, copied: bool) {
        if copied {
            headers.insert(
                &context::TRACEPARENT,
                context::traceparent(&self.trace_id, &self.span_id, self.sampled),
            );
        }
        if self.parent.is_some() {
            context::settle_tracestate(headers);
        } else {
            headers.remove(&context::TRACESTATE);
        }
    }

    /// A try at `backend` is about to be sent with `headers`: it gets a span of its own, which
    /// its `traceparent` names as the backend's parent. A try still open is ended first.
    pub fn try_started(
        &mut self,
        headers: &mut HeaderMap,
        upstream: &Arc<str>,
        backend: &BackendAddr,
        tls: bool,
    ) -> SpanId {
        let span_id = ids::span_id();
        headers.insert(
            &context::TRACEPARENT,
            context::traceparent(&self.trace_id, &span_id, self.sampled),
        );
        if let Some(rec) = &mut self.recording {
            rec.close_try(TryEnd {
                status: None,
                error: Some("abandoned"),
            });
            let server = &mut rec.spans.server;
            server.upstream = Some(Arc::clone(upstream));
            server.backend = Some(backend.clone());
            rec.open = Some(ClientSpan {
                span_id,
                start_ns: now_ns(),
                end_ns: 0,
                upstream: Arc::clone(upstream),
                backend: backend.clone(),
                tls,
                status: None,
                error: None,
                resend: rec.spans.tries.len() as u32,
            });
        }
        span_id
    }

    /// The try in progress ended (it failed, or its answer will not be used).
    pub fn try_ended(&mut self, end: TryEnd) {
        if let Some(rec) = &mut self.recording {
            rec.close_try(end);
        }
    }

    /// The request is over: a try still open ends with `last` (its response streamed to the
    /// end), the server span with `answered`, and the spans go to the export queue. The
    /// server span names the last try's upstream and backend.
    pub fn finish(self, last: TryEnd, answered: Answered) {
        self.pending().finish(last, answered);
    }

    /// What is left to do once only the end of the response is awaited: finish the spans, if
    /// any are recorded. One word, to keep the response that carries it small.
    pub fn pending(self) -> PendingSpans {
        PendingSpans(self.recording)
    }
}

/// The spans of a request whose response is still streaming ([`RequestTrace::pending`]).
#[derive(Debug)]
pub struct PendingSpans(Option<Box<Recording>>);

impl PendingSpans {
    /// As [`RequestTrace::finish`].
    pub fn finish(self, last: TryEnd, answered: Answered) {
        let Some(mut rec) = self.0 else {
            return;
        };
        rec.close_try(last);
        let s = &mut rec.spans.server;
        s.end_ns = now_ns();
        s.status = answered.status;
        s.error = answered.error;
        if s.upstream.is_none() {
            s.upstream = answered.upstream;
        }
        let tracer = Arc::clone(&rec.tracer);
        let (queue_size, batch_size) = (rec.queue_size, rec.batch_size);
        tracer.submit(rec, queue_size, batch_size);
    }
}

impl Recording {
    fn close_try(&mut self, end: TryEnd) {
        if let Some(mut t) = self.open.take() {
            t.end_ns = now_ns();
            t.status = end.status;
            t.error = end.error;
            self.spans.tries.push(t);
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
