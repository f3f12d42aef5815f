//! A request's trace: continued or started, propagated with a new span per try, and recorded
//! only when sampled with export on.

use super::*;
use crate::config::tracing::threshold;

fn settings(ratio: f64, export: bool) -> Tracing {
    let otlp = export.then(|| {
        let (address, path, _) = crate::config::tracing::endpoint("http://127.0.0.1:4318").unwrap();
        Arc::new(crate::config::model::Otlp {
            endpoint: "http://127.0.0.1:4318".into(),
            address,
            path,
            tls: None,
            headers: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            queue_size: 100,
            batch_size: 10,
            flush_interval: std::time::Duration::from_secs(1),
            shutdown_timeout: std::time::Duration::from_secs(1),
        })
    });
    Tracing {
        sample_ratio: ratio,
        sample_threshold: threshold(ratio),
        otlp,
        ..Tracing::default()
    }
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut r = Request::get("/checkout?card=secret");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(()).unwrap()
}

const PEER: &str = "192.0.2.7:5555";
const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn start(req: &Request<()>, s: &Tracing, tracer: &Arc<Tracer>) -> RequestTrace {
    RequestTrace::start(
        req,
        true,
        PEER.parse().unwrap(),
        "http",
        s,
        tracer,
        Instant::now(),
    )
    .unwrap()
}

#[test]
fn an_incoming_trace_is_continued_with_a_new_span_per_try() {
    let tracer = Arc::default();
    let req = request(&[
        ("traceparent", INCOMING),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let t = start(&req, &settings(0.0, false), &tracer);
    assert_eq!(
        t.ids().trace_id.to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(t.parent().unwrap().to_string(), "b7ad6b7169203331");
    assert!(t.sampled(), "the caller's sampled flag is honoured");
    assert!(!t.recording(), "nothing is recorded with export off");

    let mut head = req.headers().clone();
    t.propagate(&mut head, true, true);
    let tp = context::parent(&head).unwrap();
    assert_eq!(
        tp.span_id,
        t.ids().span_id,
        "a shadow copy's parent is the server span"
    );
    assert_eq!(head["tracestate"], "congo=t61rcWkgMzE");

    let first = t.try_started(&mut head);
    let second = t.try_started(&mut head);
    assert_ne!(first, second);
    assert_ne!(first, t.ids().span_id);
    let sent = context::parent(&head).unwrap();
    assert_eq!(
        (sent.trace_id, sent.span_id, sent.sampled),
        (t.ids().trace_id, second, true)
    );
    assert_eq!(head.get_all("traceparent").iter().count(), 1);
}

#[test]
fn a_request_without_a_trace_starts_one_sampled_at_the_ratio() {
    let tracer = Arc::default();
    let req = request(&[("tracestate", "foo=1")]);
    let off = start(&req, &settings(0.0, true), &tracer);
    assert!(off.parent().is_none() && !off.sampled() && !off.recording());
    let mut head = req.headers().clone();
    off.propagate(&mut head, false, true);
    assert!(
        head.get("tracestate").is_none(),
        "a new trace carries no tracestate"
    );
    assert!(
        head.get("traceparent").is_none(),
        "written per try, or for a copy"
    );
    off.propagate(&mut head, true, true);
    assert!(head["traceparent"].to_str().unwrap().ends_with("-00"));

    let on = start(&req, &settings(1.0, true), &tracer);
    assert!(on.sampled() && on.recording());
    assert_ne!(on.ids().trace_id, off.ids().trace_id);
    // Without export, a ratio still sets the flag (switchyard as the head sampler).
    let head_only = start(&req, &settings(1.0, false), &tracer);
    assert!(head_only.sampled() && !head_only.recording());
}

#[test]
fn an_unsampled_caller_is_not_recorded_and_an_invalid_one_is_restarted() {
    let tracer = Arc::default();
    let off = INCOMING.replace("-01", "-00");
    let t = start(
        &request(&[("traceparent", &off)]),
        &settings(1.0, true),
        &tracer,
    );
    assert!(!t.sampled() && !t.recording());
    assert_eq!(
        t.ids().trace_id.to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );

    let bad = INCOMING.replace("0af7", "0AF7");
    let t = start(
        &request(&[("traceparent", &bad), ("tracestate", "congo=1")]),
        &settings(0.0, true),
        &tracer,
    );
    assert!(t.parent().is_none());
    assert_ne!(
        t.ids().trace_id.to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    let mut head = HeaderMap::new();
    t.propagate(&mut head, true, true);
    assert!(head.get("tracestate").is_none());
}

#[test]
fn restart_incoming_ignores_the_callers_context() {
    let tracer = Arc::default();
    let s = Tracing {
        restart_incoming: true,
        ..settings(0.0, true)
    };
    let t = start(&request(&[("traceparent", INCOMING)]), &s, &tracer);
    assert!(t.parent().is_none() && !t.sampled());
    assert_ne!(
        t.ids().trace_id.to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

#[test]
fn a_recorded_request_goes_to_the_queue_once() {
    let tracer: Arc<Tracer> = Arc::default();
    let req = request(&[("traceparent", INCOMING), ("user-agent", "curl/8")]);
    let mut t = start(&req, &settings(0.0, true), &tracer);
    assert!(t.recording());
    let mut rec = t.take_recording().unwrap();
    assert!(t.take_recording().is_none(), "taken once");
    assert_eq!(rec.spans.server.span_id, t.ids().span_id);
    assert_eq!(rec.spans.server.uri.path(), "/checkout");
    assert_eq!(rec.spans.server.parent, t.parent());
    rec.spans.server.status = 200;
    rec.submit();
    assert_eq!(tracer.queued(), 1);
    let queued = tracer.next_queued().unwrap();
    assert_eq!(queued.spans.server.status, 200);
}

#[test]
fn propagate_off_takes_no_part() {
    let tracer = Arc::default();
    let s = Tracing {
        propagate: false,
        ..settings(1.0, false)
    };
    let req = request(&[("traceparent", INCOMING)]);
    assert!(
        RequestTrace::start(
            &req,
            true,
            PEER.parse().unwrap(),
            "http",
            &s,
            &tracer,
            Instant::now()
        )
        .is_none()
    );
}
