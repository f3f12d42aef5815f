//! A finished request's spans, written from its [`Record`]: the server span from the record
//! itself, one client span per try from its tries (each named by the span id its
//! `traceparent` carried, its outcome the try's one classification). Only a request whose trace
//! is recorded for export gets here with anything to do; for every other one this is a branch.
//!
//! A try's end: the response's end for the last try; for an earlier one, its response head
//! (a retried answer is not read further) or, when none came, the moment the next try went out
//! (a failed try is classified and the next one sent at once: no clock is read for it).

use http::Version;
use tokio::time::Instant;

use super::classify::Class;
use super::record::{Flags, Record, TryRecord};
use crate::config::model::Transport;
use crate::routing::Snapshot;
use crate::trace::span::ClientSpan;

/// Writes the request's spans and hands them to the export queue, if they are recorded.
/// `end` is when the response ended.
pub(crate) fn finish(record: &mut Record, snap: Option<&Snapshot>, end: Instant) {
    let Some(mut rec) = record.trace.as_mut().and_then(|t| t.take_recording()) else {
        return;
    };
    let route = snap.zip(record.route).map(|(s, r)| &s.routes[r]);
    let tries = record.earlier.iter().chain(record.last.iter());
    let count = record.attempts();
    let mut last_at = None;
    for (i, t) in tries.enumerate() {
        let (Some(route), Some(span_id)) = (route, t.span) else {
            continue;
        };
        let next = record.earlier.get(i + 1).or(record.last.as_ref());
        let until = if i + 1 == count {
            end
        } else {
            try_end(t, next.map_or(end, |n| n.sent))
        };
        let backend = route.backend(t.backend);
        last_at = Some(t.backend);
        rec.spans.tries.push(ClientSpan {
            span_id,
            start: t.sent,
            end: until.max(t.sent),
            upstream: std::sync::Arc::clone(&backend.state.upstream),
            backend: backend.state.addr.clone(),
            tls: backend.pool.transport().tls.is_some(),
            status: t.status,
            version: t.version.or_else(|| configured(backend.pool.transport())),
            outcome: outcome(t.class),
            error: error(t.class),
            resend: i as u32,
        });
    }
    let s = &mut rec.spans.server;
    s.end = end.max(s.start);
    s.status = record.status;
    s.error = record.error.map(|k| k.as_str());
    if record.flags != Flags::default() {
        s.flags = Some(record.flags.to_string());
    }
    if let Some(route) = route {
        s.route = Some(std::sync::Arc::clone(&route.spec.name));
        let target = last_at.map(|a| a.target()).or(record.target);
        if let Some(t) = target {
            s.upstream = Some(std::sync::Arc::clone(&route.targets[t].upstream.spec.name));
        }
        if let Some(at) = last_at {
            s.backend = Some(route.backend(at).state.addr.clone());
        }
    }
    rec.submit();
}

/// The HTTP version a try that got no answer was spoken in, as far as the upstream's
/// `protocol` says (`auto` over TLS: whatever ALPN would have picked, unknown).
fn configured(t: &Transport) -> Option<Version> {
    t.speaks_http2().map(|h2| {
        if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    })
}

/// When an earlier try ended: at its response head, or as the `next` one went out.
fn try_end(t: &TryRecord, next: Instant) -> Instant {
    match t.ttfb {
        Some(ttfb) => t.sent + ttfb,
        None => next,
    }
}

/// The try's classified outcome, as the span's `switchyard.outcome`.
fn outcome(class: Class) -> &'static str {
    match class {
        Class::Success => "success",
        Class::ServerError => "server-error",
        Class::Timeout => "timeout",
        Class::ConnectFailure => "connect-failure",
        Class::Reset => "reset",
        Class::Stale => "stale-connection",
        Class::Refused => "refused",
        Class::Shortage(_) => "local-resources",
        Class::Client => "client",
    }
}

/// The span's `error.type` when the try failed without an answer (an answer's error is its
/// status, which the span carries).
fn error(class: Class) -> Option<&'static str> {
    match class {
        Class::Success | Class::ServerError => None,
        other => Some(outcome(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Method, Request, Version};

    use super::*;
    use crate::backend::Registry;
    use crate::routing::BackendRef;
    use crate::routing::keeper::Keeper;
    use crate::trace::{RequestTrace, Tracer};

    const CONFIG: &str = "
listeners: [{bind: '127.0.0.1:0'}]
upstreams: { app: { backends: ['a:1', 'b:1'] } }
routes: [{ name: r, split: [{upstream: app, weight: 1}], retries: { attempts: 1, on: [connect-failure] } }]
tracing: { otlp: { endpoint: 'http://127.0.0.1:4318' } }
";

    fn snapshot() -> Snapshot {
        let config = Arc::new(crate::config::parse_str(CONFIG).unwrap());
        let (backends, _) = Registry::new(1).reconcile(&config, &HashMap::new());
        crate::reload::snapshot::build(1, config, &backends, &HashMap::new(), &mut Keeper::new(1))
    }

    #[tokio::test]
    async fn a_retried_request_has_a_server_span_and_one_client_span_per_try() {
        let snap = snapshot();
        let tracer: Arc<Tracer> = Arc::default();
        let t0 = Instant::now();
        let req = Request::get("/pay")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let mut record = Record::start(t0, Method::GET, Version::HTTP_11);
        let peer = "192.0.2.1:4000".parse().unwrap();
        record.trace =
            RequestTrace::start(&req, true, peer, "http", &snap.config.tracing, &tracer, t0);
        record.route = Some(0);
        let ms = Duration::from_millis;
        let first = TryRecord {
            backend: BackendRef::new(0, 0),
            sent: t0 + ms(1),
            ttfb: None,
            class: Class::ConnectFailure,
            status: None,
            version: None,
            resent: false,
            span: Some(crate::trace::ids::span_id()),
        };
        let second = TryRecord {
            backend: BackendRef::new(0, 1),
            sent: t0 + ms(4),
            ttfb: Some(ms(3)),
            class: Class::Success,
            status: Some(200),
            span: Some(crate::trace::ids::span_id()),
            ..first
        };
        record.tried(first);
        record.tried(second);
        record.status = 200;
        let ids = record.trace_ids().unwrap();

        finish(&mut record, Some(&snap), t0 + ms(20));
        assert_eq!(tracer.queued(), 3, "a server span and two client spans");
        assert_eq!(record.trace_ids(), Some(ids), "the ids stay for the log");
        let rec = tracer.next_queued().unwrap();
        let s = &rec.spans.server;
        assert_eq!((s.trace_id, s.span_id), (ids.trace_id, ids.span_id));
        assert_eq!((s.start, s.end, s.status), (t0, t0 + ms(20), 200));
        assert_eq!(s.route.as_deref(), Some("r"));
        assert_eq!(s.upstream.as_deref(), Some("app"));
        assert_eq!(s.backend.as_ref().map(|b| b.as_str()), Some("b:1"));
        assert_eq!(s.flags.as_deref(), Some("RT"));
        let tries: Vec<_> = rec
            .spans
            .tries
            .iter()
            .map(|c| {
                (
                    Some(c.span_id),
                    c.backend.as_str(),
                    c.start,
                    c.end,
                    c.outcome,
                    c.error,
                    c.status,
                    c.resend,
                )
            })
            .collect();
        assert_eq!(
            tries,
            [
                (
                    first.span,
                    "a:1",
                    t0 + ms(1),
                    t0 + ms(4),
                    "connect-failure",
                    Some("connect-failure"),
                    None,
                    0
                ),
                (
                    second.span,
                    "b:1",
                    t0 + ms(4),
                    t0 + ms(20),
                    "success",
                    None,
                    Some(200),
                    1
                ),
            ]
        );

        // Finished once: a second call has nothing left to send.
        finish(&mut record, Some(&snap), t0 + ms(30));
        assert_eq!(tracer.queued(), 0);
    }

    #[tokio::test]
    async fn an_unrecorded_request_sends_nothing() {
        let snap = snapshot();
        let tracer: Arc<Tracer> = Arc::default();
        let t0 = Instant::now();
        let req = Request::get("/").body(()).unwrap();
        let mut settings = snap.config.tracing.clone();
        settings.sample_threshold = None;
        let mut record = Record::start(t0, Method::GET, Version::HTTP_11);
        let peer = "192.0.2.1:4000".parse().unwrap();
        record.trace = RequestTrace::start(&req, true, peer, "http", &settings, &tracer, t0);
        assert!(record.trace_ids().is_some(), "ids without export");
        finish(&mut record, Some(&snap), t0);
        assert_eq!(tracer.queued(), 0);
    }
}
