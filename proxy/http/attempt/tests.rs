//! Retries, reroutes, panic mode, the retry budget and per-try timeouts, in-process: a stub
//! sender answers each try as the test scripts it, on tokio's paused clock. The routing tables,
//! breakers and budgets are the real ones, built from a real config.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::aim::Aim;
use super::send::Sender;
use super::{Answered, Attempt};
use crate::backend::pool::{Failed, SendError, Sent};
use crate::backend::{Backend, Registry};
use crate::body::ReqBody;
use crate::error::{ErrorKind, ProxyError};
use crate::http::record::{Flags, Record};
use crate::routing::Snapshot;
use crate::routing::keeper::Keeper;
use crate::server::conn::Timer;
use crate::stats::Outcome;
use crate::stats::counters::LocalErrors;
use crate::trace::RequestTrace;
use crate::trace::context;

/// What the stub does with one try.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Connection refused: the request comes back unsent.
    Refused,
    /// The process is out of file descriptors.
    OutOfFiles,
    /// Never answers.
    Hang,
    /// The connection closes under the request before any response (on a reused connection
    /// unless the try asked for a fresh one).
    Closed,
    /// An answer that is not HTTP.
    Garbage,
}

/// Answers tries in order from a script (then 200s), and notes where each went.
#[derive(Default)]
struct Stub {
    script: Mutex<VecDeque<Reply>>,
    /// (backend address, asked for a fresh connection) of every try.
    sent: Mutex<Vec<(String, bool)>>,
    /// The `traceparent` each try carried.
    parents: Mutex<Vec<Option<String>>>,
    /// Each try's head but its `traceparent`: method, URI, version, every field in order.
    heads: Mutex<Vec<String>>,
}

impl Stub {
    fn new(script: &[Reply]) -> Stub {
        Stub {
            script: Mutex::new(script.iter().copied().collect()),
            sent: Mutex::default(),
            parents: Mutex::default(),
            heads: Mutex::default(),
        }
    }

    fn sent(&self) -> Vec<(String, bool)> {
        self.sent.lock().unwrap().clone()
    }

    fn backends(&self) -> Vec<String> {
        self.sent().into_iter().map(|(b, _)| b).collect()
    }
}

impl Sender for Stub {
    type Body = ();
    type Conn = ();

    async fn send(
        &self,
        backend: &Backend,
        req: Request<ReqBody>,
        fresh: bool,
        _now: Instant,
    ) -> Result<Sent<(), ()>, Failed> {
        self.sent
            .lock()
            .unwrap()
            .push((backend.state.addr.as_str().to_owned(), fresh));
        self.parents.lock().unwrap().push(
            req.headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let fields = req
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str() != "traceparent")
            .map(|(n, v)| format!("{n}: {v:?} {}", v.is_sensitive()))
            .collect::<Vec<_>>();
        self.heads.lock().unwrap().push(format!(
            "{} {} {:?} {fields:?}",
            req.method(),
            req.uri(),
            req.version()
        ));
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Status(200));
        let unsent = |error| Failed {
            error,
            unsent: Some(Box::new(req)),
            reused: false,
        };
        match reply {
            Reply::Status(s) => Ok(Sent {
                resp: Response::builder().status(s).body(()).unwrap(),
                conn: (),
            }),
            Reply::Refused => Err(unsent(SendError::Connect(
                std::io::ErrorKind::ConnectionRefused.into(),
            ))),
            Reply::OutOfFiles => Err(unsent(SendError::Connect(
                std::io::Error::from_raw_os_error(24),
            ))),
            Reply::Hang => std::future::pending().await,
            Reply::Closed => Err(Failed {
                error: SendError::Exchange(hyper_error(b"").await),
                unsent: None,
                reused: !fresh,
            }),
            Reply::Garbage => Err(Failed {
                error: SendError::Exchange(hyper_error(b"NOT HTTP\r\n\r\n").await),
                unsent: None,
                reused: false,
            }),
        }
    }
}

/// A real hyper client error: the peer reads the request, writes `answer`, and closes.
async fn hyper_error(answer: &'static [u8]) -> hyper::Error {
    let (client, mut server) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        let _ = server.read(&mut buf).await;
        let _ = server.write_all(answer).await;
    });
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .unwrap();
    tokio::spawn(conn);
    tx.send_request(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap_err()
}

const HEAD: &str = "listeners: [{bind: '127.0.0.1:0'}]\n";

fn snapshot(yaml: &str) -> Snapshot {
    let config = Arc::new(crate::config::parse_str(&format!("{HEAD}{yaml}")).unwrap());
    let (backends, _) = Registry::new(1).reconcile(&config, &HashMap::new());
    crate::reload::snapshot::build(1, config, &backends, &HashMap::new(), &mut Keeper::new(1))
}

/// One request through the route's tries, as the handler sends it (a GET, replayable).
async fn attempt(
    snap: &Snapshot,
    stub: &Stub,
    method: Method,
) -> (Result<Answered<(), ()>, ProxyError>, Box<Record>) {
    let rt = &snap.routes[0];
    let aim = Aim::new(rt, &HeaderMap::new());
    let mut record = Record::start(Instant::now(), method.clone(), Version::HTTP_11);
    // Trace context as the snapshot's `tracing` says (on by default, nothing exported).
    let head = Request::get("/").body(()).unwrap();
    record.trace = RequestTrace::start(
        &head,
        true,
        "192.0.2.1:1".parse().unwrap(),
        "http",
        &snap.config.tracing,
        &Arc::default(),
        record.started,
    );
    let shortages = LocalErrors::default();
    let mut a = Attempt::new(
        rt,
        aim,
        Instant::now() + rt.spec.timeout,
        Timer::Own,
        &method,
        &shortages,
        record,
    );
    let mut sensitive = http::HeaderValue::from_static("Bearer x");
    sensitive.set_sensitive(true);
    let req = Request::builder()
        .method(method)
        .uri("/item?q=1")
        .header("host", "shop")
        .header("x-multi", "1")
        .header("accept", "*/*")
        .header("x-multi", "2")
        .header("authorization", sensitive)
        .body(ReqBody::empty())
        .unwrap();
    let (head, body) = req.into_parts();
    if a.policy.is_some() || a.idempotent {
        a.keep_for_replay(&head, Bytes::new());
    }
    let r = a.run(stub, Request::from_parts(head, body)).await;
    (r, a.record)
}

fn status_of(r: &Result<Answered<(), ()>, ProxyError>) -> u16 {
    match r {
        Ok(a) => a.resp.status().as_u16(),
        Err(e) => e.status().as_u16(),
    }
}

fn backend<'a>(snap: &'a Snapshot, upstream: &str, addr: &str) -> &'a Backend {
    snap.upstreams
        .iter()
        .find(|u| &*u.spec.name == upstream)
        .and_then(|u| u.backends.iter().find(|b| b.state.addr.as_str() == addr))
        .unwrap()
}

const TWO: &str = "upstreams: { app: { backends: ['a:1', 'b:1'] } }\n";

#[tokio::test(start_paused = true)]
async fn a_retried_5xx_goes_to_another_backend() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}], retries: {{ attempts: 2, on: [503] }} }}]\n"
    ));
    let stub = Stub::new(&[Reply::Status(503)]);
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 200);
    let sent = stub.backends();
    assert_eq!(sent.len(), 2);
    assert_ne!(
        sent[0], sent[1],
        "never the same backend while another is left"
    );
    assert_eq!(snap.routes[0].targets[0].stats.read().retries, 1);
    assert!(record.flags.has(Flags::RETRIED));
    assert_eq!(record.attempts(), 2);
    let failed = backend(&snap, "app", &sent[0]);
    assert_eq!(failed.state.stats.outcome(Outcome::ServerError), 1);
}

#[tokio::test(start_paused = true)]
async fn without_retries_a_5xx_is_the_answer() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}] }}]\n"
    ));
    let stub = Stub::new(&[Reply::Status(503)]);
    let (r, _) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 503);
    assert_eq!(stub.sent().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_goes_to_another_backend_even_without_a_policy() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}] }}]\n"
    ));
    let stub = Stub::new(&[Reply::Refused]);
    let (r, record) = attempt(&snap, &stub, Method::POST).await;
    assert_eq!(
        status_of(&r),
        200,
        "a request no backend saw is safe to send anywhere"
    );
    assert!(record.flags.has(Flags::UPSTREAM_CONNECT_FAILURE));
    // Both refuse: the last refusal is the answer, charged to the backend that gave it.
    let stub = Stub::new(&[Reply::Refused, Reply::Refused]);
    let (r, record) = attempt(&snap, &stub, Method::POST).await;
    assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::Connect));
    assert!(record.backend.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_dead_canary_share_is_rerouted_to_stable() {
    let snap = snapshot(
        "upstreams: { canary: { backends: ['c:1'] }, stable: { backends: ['s:1'] } }\n\
         routes: [{ name: r, split: [{upstream: canary, weight: 1}, {upstream: stable, weight: 1}] }]\n",
    );
    backend(&snap, "canary", "c:1").state.set_healthy(false);
    let stub = Stub::new(&[]);
    // The first request of the route is aimed at the canary (the split's cycle starts there).
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 200);
    assert_eq!(stub.backends(), ["s:1"]);
    assert_eq!(record.aimed, Some(0));
    assert_eq!(record.target, Some(1));
    let targets = &snap.routes[0].targets;
    assert_eq!(targets[0].stats.read().rerouted_away, 1);
    assert_eq!(targets[1].stats.read().rerouted_in, 1);
    // Nothing healthy anywhere: a 503 at once, charged to the aimed upstream.
    backend(&snap, "stable", "s:1").state.set_healthy(false);
    let (r, _) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(r.err().map(|e| e.kind()), Some(ErrorKind::NoBackend));
    assert_eq!(stub.sent().len(), 1, "no try was made");
}

#[tokio::test(start_paused = true)]
async fn past_the_panic_threshold_every_backend_takes_traffic_again() {
    let four = "upstreams: { app: { backends: ['a:1', 'b:1', 'c:1', 'd:1'] } }\n\
                routes: [{ name: r, split: [{upstream: app, weight: 1}] }]\n";
    let snap = snapshot(four);
    for addr in ["b:1", "c:1", "d:1"] {
        backend(&snap, "app", addr).state.set_healthy(false);
    }
    let stub = Stub::new(&[]);
    for _ in 0..40 {
        let _ = attempt(&snap, &stub, Method::GET).await;
    }
    let sent = stub.backends();
    assert!(
        sent.iter().any(|b| b != "a:1"),
        "three of four out is past 50%: all four share the load"
    );
    // One of four out is within the threshold: it gets nothing.
    let snap = snapshot(four);
    backend(&snap, "app", "b:1").state.set_healthy(false);
    let stub = Stub::new(&[]);
    for _ in 0..40 {
        let _ = attempt(&snap, &stub, Method::GET).await;
    }
    assert!(stub.backends().iter().all(|b| b != "b:1"));
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_at_its_share_of_requests() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}], retries: {{ attempts: 2, on: [503], budget_percent: 50, min_per_second: 0 }} }}]\n"
    ));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let stub = Stub::new(&[Reply::Status(503)]);
        statuses.push(status_of(&attempt(&snap, &stub, Method::GET).await.0));
    }
    // Retries may add half the requests: the 2nd and 4th request's retries fit.
    assert_eq!(statuses, [503, 200, 503, 200]);
    let c = snap.routes[0].targets[0].stats.read();
    assert_eq!((c.retries, c.retries_denied), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_try_that_hangs_gives_way_after_its_per_try_timeout() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, timeout: 10s, split: [{{upstream: app, weight: 1}}], retries: {{ attempts: 1, on: [timeout], per_try_timeout: 1s }} }}]\n"
    ));
    let stub = Stub::new(&[Reply::Hang]);
    let start = Instant::now();
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 200);
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    assert!(record.flags.has(Flags::UPSTREAM_TIMEOUT));
    let first = backend(&snap, "app", &stub.backends()[0]);
    assert_eq!(first.state.stats.outcome(Outcome::Timeout), 1);
    // Both hang: the route's timeout ends it, however many tries are left.
    let stub = Stub::new(&[Reply::Hang, Reply::Hang]);
    let start = Instant::now();
    let (r, _) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 504);
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_a_try_without_per_try_timeout() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, timeout: 3s, split: [{{upstream: app, weight: 1}}], retries: {{ attempts: 2, on: [timeout] }} }}]\n"
    ));
    let stub = Stub::new(&[Reply::Hang]);
    let start = Instant::now();
    let (r, _) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 504);
    assert_eq!(Instant::now() - start, Duration::from_secs(3));
    assert_eq!(stub.sent().len(), 1, "no time left for a retry");
}

#[tokio::test(start_paused = true)]
async fn a_closed_keep_alive_connection_is_resent_fresh_to_the_same_backend() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}] }}]\n"
    ));
    let stub = Stub::new(&[Reply::Closed]);
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 200);
    let sent = stub.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].0, sent[1].0, "the same backend");
    let heads = stub.heads.lock().unwrap().clone();
    assert_eq!(heads[0], heads[1], "the same request again");
    assert!(
        heads[1].contains(r#""x-multi: \"1\" false", "x-multi: \"2\" false""#),
        "{heads:?}"
    );
    assert_eq!(
        (sent[0].1, sent[1].1),
        (false, true),
        "again on a fresh connection"
    );
    let b = backend(&snap, "app", &sent[0].0);
    assert_eq!(b.state.stats.stale_resends(), 1);
    assert_eq!(
        b.state.stats.outcome(Outcome::Reset),
        0,
        "not the backend's fault"
    );
    assert!(record.flags.has(Flags::RETRIED) && !record.flags.has(Flags::UPSTREAM_RESET));
    // A POST that may have reached the backend is never sent twice.
    let stub = Stub::new(&[Reply::Closed]);
    let (r, _) = attempt(&snap, &stub, Method::POST).await;
    assert_eq!(status_of(&r), 502);
    assert_eq!(stub.sent().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_broken_answer_counts_against_the_backend() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}] }}]\n"
    ));
    let stub = Stub::new(&[Reply::Garbage]);
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 502);
    assert!(record.flags.has(Flags::UPSTREAM_RESET));
    let b = backend(&snap, "app", &stub.backends()[0]);
    assert_eq!(b.state.stats.outcome(Outcome::Reset), 1);
}

#[tokio::test(start_paused = true)]
async fn running_out_of_descriptors_is_answered_503_and_blames_no_backend() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}], retries: {{ attempts: 2 }} }}]\n"
    ));
    let stub = Stub::new(&[Reply::OutOfFiles]);
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    let e = r.err().unwrap();
    assert_eq!(
        (e.kind(), e.status().as_u16()),
        (ErrorKind::LocalResource, 503)
    );
    assert_eq!(stub.sent().len(), 1, "another backend would not help");
    assert!(record.flags.has(Flags::LOCAL_RESOURCES));
    let b = backend(&snap, "app", &stub.backends()[0]);
    assert_eq!(b.state.stats.outcome(Outcome::ConnectFailure), 0);
    assert_eq!(b.state.breaker().consecutive_failures(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_try_carries_its_own_span_in_the_requests_trace() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}], retries: {{ attempts: 2, on: [503] }} }}]\n"
    ));
    let stub = Stub::new(&[Reply::Status(503)]);
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 200);
    let ids = record.trace_ids().unwrap();
    let sent: Vec<context::Parent> = stub
        .parents
        .lock()
        .unwrap()
        .iter()
        .map(|p| context::parse_traceparent(p.as_deref().unwrap().as_bytes()).unwrap())
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|p| p.trace_id == ids.trace_id));
    let spans = [record.earlier[0].span, record.last.unwrap().span];
    assert_eq!(spans, [Some(sent[0].span_id), Some(sent[1].span_id)]);
    assert_ne!(sent[0].span_id, sent[1].span_id);
    assert!(sent.iter().all(|p| p.span_id != ids.span_id));
}

#[tokio::test(start_paused = true)]
async fn with_propagate_off_tries_carry_no_trace_context() {
    let snap = snapshot(&format!(
        "{TWO}routes: [{{ name: r, split: [{{upstream: app, weight: 1}}] }}]\ntracing: {{ propagate: false }}\n"
    ));
    let stub = Stub::new(&[]);
    let (r, record) = attempt(&snap, &stub, Method::GET).await;
    assert_eq!(status_of(&r), 200);
    assert!(record.trace_ids().is_none());
    assert_eq!(*stub.parents.lock().unwrap(), [None]);
    assert_eq!(record.last.unwrap().span, None);
}
