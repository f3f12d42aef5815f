//! Shadow traffic on real sockets: what the client gets is untouched, the copies are bounded,
//! and differences between primary and shadow answers are counted and shown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::proxy::sample;
use crate::support::*;

// ----- backends of our own -----

/// One request as a [`Scripted`] backend received it.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Script = dyn Fn(&str) -> (u16, &'static str, String) + Send + Sync;

/// A backend answering each path as its script says (status, content type, body), recording
/// every request with its body.
struct Scripted {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(
        script: impl Fn(&str) -> (u16, &'static str, String) + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let g = Arc::clone(&got);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (g, script) = (Arc::clone(&g), Arc::clone(&script));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (g, script) = (Arc::clone(&g), Arc::clone(&script));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let path = parts.uri.path().to_owned();
                            g.lock().unwrap().push(Got {
                                method: parts.method.to_string(),
                                path: path.clone(),
                                headers: parts.headers,
                                body,
                            });
                            let (status, ctype, text) = script(&path);
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", ctype.parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted { addr, got, task }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that accepts connections, reads whatever comes and never answers.
struct BlackHole {
    addr: SocketAddr,
    /// Connections open right now.
    open: Arc<AtomicI64>,
    /// Request heads received (`\r\n\r\n` seen), over all connections.
    requests: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, requests) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicU64::new(0)));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (o, r, c) = (Arc::clone(&open), Arc::clone(&requests), Arc::clone(&conns));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                o.fetch_add(1, Ordering::SeqCst);
                let (o, r) = (Arc::clone(&o), Arc::clone(&r));
                let t = tokio::spawn(async move {
                    // Counted closed however this task ends (EOF, error, or aborted).
                    struct Closed(Arc<AtomicI64>);
                    impl Drop for Closed {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _closed = Closed(o);
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                            r.fetch_add(1, Ordering::SeqCst);
                            tail.clear();
                        }
                    }
                });
                c.lock().unwrap().push(t.abort_handle());
            }
        });
        BlackHole {
            addr,
            open,
            requests,
            conns,
            task,
        }
    }

    /// Cuts every connection, as a crashed process would.
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// ----- helpers -----

/// One upstream `app` for the primary, one `next` for the shadow, route `r` shadowing to it.
fn config(primary: SocketAddr, shadow: SocketAddr, shadow_block: &str, extra: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{primary}\"] }}\n  next: {{ backends: [\"{shadow}\"] }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: next, {shadow_block} }}\n{extra}"
    )
}

async fn shadow_view(proxy: &Proxy) -> Value {
    let r = get(&client(), &proxy.admin_url("/shadow/r")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Polls `GET /shadow/r` until `cond` holds (bounded: 20 s).
async fn wait_shadow(proxy: &Proxy, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2000 {
        let v = shadow_view(proxy).await;
        if cond(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("shadow never {what}: {}", shadow_view(proxy).await);
}

fn n(v: &Value, key: &str) -> u64 {
    v["requests"][key].as_u64().unwrap()
}

/// Every request chosen for shadowing that reached an end, whatever it was.
fn settled(v: &Value) -> u64 {
    v["requests"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum()
}

async fn post(url: &str, body: Vec<u8>) -> client::Resp {
    send(
        &client(),
        Request::post(url)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

// ----- tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_the_same_answers_with_shadowing_on_and_off() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (500, "text/plain", "shadow says no\n".into())).await;
    // Two routes to the same backend, by host: one shadows everything, one does not.
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\n  next: {{ backends: [\"{}\"] }}\nroutes:\n\
         \x20 - name: r\n    match: {{ host: on.test }}\n    split: [{{ upstream: app, weight: 1 }}]\n\
         \x20   shadow: {{ upstream: next, percent: 100, host: next.internal, methods: [GET, PUT, POST], compare: true }}\n\
         \x20 - name: off\n    match: {{ host: off.test }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
        app.addr, next.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let requests = |host: &'static str| {
        let url = |p: &str| proxy.url(p);
        vec![
            // A client claiming to be a shadow copy: the claim never reaches a backend.
            Request::get(url("/"))
                .header("host", host)
                .header("x-switchyard-shadow", "1")
                .body(Full::default())
                .unwrap(),
            Request::get(url("/status/404"))
                .header("host", host)
                .body(Full::default())
                .unwrap(),
            Request::put(url("/count"))
                .header("host", host)
                .body(Full::new(Bytes::from(vec![7u8; 3000])))
                .unwrap(),
            Request::post(url("/count"))
                .header("host", host)
                .body(Full::new(Bytes::from_static(b"abc")))
                .unwrap(),
        ]
    };
    for (on, off) in requests("on.test").into_iter().zip(requests("off.test")) {
        let (a, b) = (send(&c, on).await, send(&c, off).await);
        assert_eq!(a.status, b.status);
        assert_eq!(a.body, b.body);
        let mut ha = a.headers.clone();
        let mut hb = b.headers.clone();
        ha.remove("date");
        hb.remove("date");
        assert_eq!(ha, hb);
    }
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 4 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(n(&v, "5xx"), 4, "{v}");
    // The copies went out whole, marked, with the Host rewritten; the primary saw no mark.
    let got = next.got();
    let mut got_paths: Vec<(String, String)> = got
        .iter()
        .map(|g| (g.method.clone(), g.path.clone()))
        .collect();
    got_paths.sort();
    assert_eq!(
        got_paths,
        [
            ("GET", "/"),
            ("GET", "/status/404"),
            ("POST", "/count"),
            ("PUT", "/count")
        ]
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
    );
    for g in &got {
        assert_eq!(g.headers["x-switchyard-shadow"], "1");
        assert_eq!(g.headers["host"], "next.internal");
    }
    let put = got.iter().find(|g| g.method == "PUT").unwrap();
    assert_eq!(put.body, vec![7u8; 3000]);
    assert!(
        app.seen()
            .iter()
            .all(|s| !s.headers.contains_key("x-switchyard-shadow"))
    );
    assert_eq!(app.traffic(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_never_answers_costs_the_client_nothing_and_stays_bounded() {
    let app = TestBackend::start("app").await;
    let hole = BlackHole::start().await;
    let proxy = Proxy::start(&config(
        app.addr,
        hole.addr,
        "percent: 100, max_in_flight: 3, timeout: 60s",
        "",
    ))
    .await;
    let c = client();
    let first = get(&c, &proxy.url("/")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "app\n");
    // The client has its whole answer while its copy is still out.
    let v = shadow_view(&proxy).await;
    assert_eq!(v["in_flight"], 1, "{v}");
    assert_eq!(settled(&v), 0, "{v}");
    for _ in 0..9 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200);
    }
    // At most three copies out; the other seven were skipped, not queued.
    let v = shadow_view(&proxy).await;
    assert_eq!(v["in_flight"], 3, "{v}");
    assert_eq!(n(&v, "skipped_in_flight"), 7, "{v}");
    for _ in 0..2000 {
        if hole.requests.load(Ordering::SeqCst) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hole.requests.load(Ordering::SeqCst), 3);
    assert!(hole.open.load(Ordering::SeqCst) <= 3);

    // The shadow dies: its copies end as failures, every place comes back, nothing lingers.
    hole.cut();
    let v = wait_shadow(&proxy, "freed its places", |v| {
        v["in_flight"] == 0 && n(v, "failed") == 3
    })
    .await;
    assert_eq!(settled(&v), 10, "{v}");
    let b = proxy.backend_status("next", hole.addr).await;
    assert_eq!(b["in_flight"], 0, "{b}");
    // The primary saw none of it.
    let a = proxy.backend_status("app", app.addr).await;
    assert_eq!(a["outcomes"]["success"], 10, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_timeout_frees_its_place_and_its_connection() {
    let app = TestBackend::start("app").await;
    let hole = BlackHole::start().await;
    let proxy = Proxy::start(&config(
        app.addr,
        hole.addr,
        "percent: 100, max_in_flight: 2, timeout: 200ms",
        "",
    ))
    .await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    let v = wait_shadow(&proxy, "timed out", |v| {
        v["in_flight"] == 0 && settled(v) == 2
    })
    .await;
    assert_eq!(n(&v, "timeout") + n(&v, "skipped_in_flight"), 2, "{v}");
    assert!(n(&v, "timeout") >= 1, "{v}");
    // The timed-out connections were closed, not left open at the shadow.
    for _ in 0..2000 {
        if hole.open.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hole.open.load(Ordering::SeqCst), 0);
    let b = proxy.backend_status("next", hole.addr).await;
    assert!(b["outcomes"]["timeout"].as_u64().unwrap() >= 1, "{b}");
}

/// Primary and shadow answering JSON from these scripts, compared.
async fn compared(
    primary: fn(&str) -> String,
    shadow: fn(&str) -> String,
    block: &str,
) -> (Proxy, Scripted, Scripted) {
    let p = Scripted::start(move |path| (200, "application/json", primary(path))).await;
    let s = Scripted::start(move |path| (200, "application/json", shadow(path))).await;
    let proxy = Proxy::start(&config(p.addr, s.addr, block, "")).await;
    (proxy, p, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_returning_different_json_is_counted_and_shown_with_the_path() {
    let (proxy, _p, _s) = compared(
        |_| r#"{"id":7,"cart":{"items":[{"sku":"a","price":10}]},"ts":"1"}"#.into(),
        |_| r#"{"ts":"2","id":7,"cart":{"items":[{"sku":"a","price":12}]}}"#.into(),
        "percent: 100, compare: true, compare_headers: [], ignore_fields: [/ts]",
    )
    .await;
    let c = client();
    let r = get_with(
        &c,
        &proxy.url("/cart?user=9"),
        &[
            ("authorization", "Bearer s3cret"),
            ("cookie", "session=abc"),
            ("x-user-id", "9"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("\"price\":10"),
        "the client gets the primary's answer"
    );
    let v = wait_shadow(&proxy, "compared", |v| v["compared"] == 1).await;
    assert_eq!(v["mismatched"], 1, "{v}");
    assert_eq!(v["mismatches"]["body"], 1, "{v}");
    let m = &v["recent_mismatches"][0];
    assert_eq!(m["kind"], "body");
    assert_eq!(m["difference"], "/cart/items/0/price");
    assert_eq!(m["request"], "GET /cart?user=9");
    assert_eq!(m["primary_status"], 200);
    assert_eq!(m["shadow_status"], 200);
    let headers = &m["request_headers"];
    assert_eq!(headers["authorization"], "[redacted]");
    assert_eq!(headers["cookie"], "[redacted]");
    assert_eq!(headers["x-user-id"], "9");
    assert!(!v.to_string().contains("s3cret"));
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_shadow_mismatches_total{route=\"r\",upstream=\"next\",kind=\"body\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "switchyard_shadow_requests_total{route=\"r\",upstream=\"next\",result=\"success\"}"
        ),
        Some(1.0)
    );
    // The rollout controller's reading.
    let snap = proxy.running().shared.snapshot();
    let counts = snap.route("r").unwrap().shadow_stats.read();
    assert_eq!(counts.mismatch_rate(), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_fields_and_key_order_do_not_count() {
    let (proxy, _p, _s) = compared(
        |path| format!(r#"{{"path":"{path}","n":1,"timestamp":"10:00:00","meta":{{"request_id":"p-1"}}}}"#),
        |path| format!(r#"{{ "meta": {{"request_id": "s-9"}}, "timestamp": "10:00:01", "n": 1.0, "path": "{path}" }}"#),
        "percent: 100, compare: true, ignore_fields: [/timestamp, /meta/request_id]",
    )
    .await;
    let c = client();
    for i in 0..5 {
        assert_eq!(get(&c, &proxy.url(&format!("/x/{i}"))).await.status, 200);
    }
    let v = wait_shadow(&proxy, "compared all", |v| v["compared"] == 5).await;
    assert_eq!(v["mismatched"], 0, "{v}");
    assert_eq!(v["recent_mismatches"].as_array().unwrap().len(), 0);

    // The same answers without ignore_fields do differ, at the first ignored field.
    let (proxy, _p, _s) = compared(
        |_| r#"{"n":1,"timestamp":"10:00:00"}"#.into(),
        |_| r#"{"timestamp":"10:00:01","n":1}"#.into(),
        "percent: 100, compare: true",
    )
    .await;
    get(&c, &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "compared", |v| v["compared"] == 1).await;
    assert_eq!(v["recent_mismatches"][0]["difference"], "/timestamp", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_header_differences_are_their_own_kinds() {
    let p = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let s = Scripted::start(|path| match path {
        "/s" => (404, "text/plain", "ok".into()),
        _ => (200, "text/html", "ok".into()),
    })
    .await;
    let proxy = Proxy::start(&config(p.addr, s.addr, "percent: 100, compare: true", "")).await;
    let c = client();
    get(&c, &proxy.url("/s")).await;
    get(&c, &proxy.url("/h")).await;
    let v = wait_shadow(&proxy, "compared", |v| v["compared"] == 2).await;
    assert_eq!(v["mismatches"]["status"], 1, "{v}");
    assert_eq!(v["mismatches"]["header"], 1, "{v}");
    let recent = v["recent_mismatches"].as_array().unwrap();
    let h = recent.iter().find(|m| m["kind"] == "header").unwrap();
    assert_eq!(h["difference"], "content-type");
    assert_eq!(h["header_values"]["shadow"], "text/html");
    let st = recent.iter().find(|m| m["kind"] == "status").unwrap();
    assert_eq!(
        (st["primary_status"].as_u64(), st["shadow_status"].as_u64()),
        (Some(200), Some(404))
    );
}

/// Sends a chunked POST over a raw connection (its length unknown up front); returns the
/// response text.
async fn chunked_post(addr: SocketAddr, path: &str, chunks: &[Vec<u8>]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_are_not_mirrored() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 100, max_body_bytes: 1024, methods: [POST]",
        "",
    ))
    .await;
    // Known length over the cap; unknown length that grows past it; one under it.
    assert_eq!(
        post(&proxy.url("/count"), vec![1; 4096]).await.text(),
        "4096\n"
    );
    let resp = chunked_post(
        proxy.addr,
        "/count",
        &[vec![2; 600], vec![2; 600], vec![2; 600]],
    )
    .await;
    assert!(resp.ends_with("1800\n"), "{resp}");
    let resp = chunked_post(proxy.addr, "/count", &[vec![3; 500], vec![3; 500]]).await;
    assert!(resp.ends_with("1000\n"), "{resp}");
    assert_eq!(post(&proxy.url("/count"), vec![4; 10]).await.text(), "10\n");
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 4 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(n(&v, "skipped_body_too_large"), 2, "{v}");
    assert_eq!(n(&v, "success"), 2, "{v}");
    let mut bodies: Vec<Bytes> = next.got().into_iter().map(|g| g.body).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [Bytes::from(vec![3u8; 1000]), Bytes::from(vec![4u8; 10])]
    );
    // GET is not in `methods` here: counted, not sent.
    get(&client(), &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "counted the GET", |v| n(v, "skipped_method") == 1).await;
    assert_eq!(settled(&v), 5);
    assert_eq!(next.got().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_5xx_never_open_a_primary_breaker() {
    let app = TestBackend::start("app").await;
    let bad = TestBackend::start("bad").await;
    bad.set_failing(100);
    let breaker = "circuit_breaker: { consecutive_failures: 3, open_for: 60s }";
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"], {breaker} }}\n  next: {{ backends: [\"{}\"], {breaker} }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: next, percent: 100 }}\n",
        app.addr, bad.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "app\n");
    }
    // The shadow's own breaker opened; the primary's is closed and saw no failure.
    proxy
        .wait_backend("next", bad.addr, "open", |b| {
            b["breaker"]["state"] == "open"
        })
        .await;
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 20 && v["in_flight"] == 0
    })
    .await;
    assert!(n(&v, "5xx") >= 3, "{v}");
    assert_eq!(n(&v, "5xx") + n(&v, "no_backend"), 20, "{v}");
    let a = proxy.backend_status("app", app.addr).await;
    assert_eq!(a["breaker"]["state"], "closed", "{a}");
    assert_eq!(a["outcomes"]["5xx"], 0, "{a}");
    assert_eq!(a["outcomes"]["success"], 20, "{a}");
    // Nothing of the shadow's shows in the route's request counts.
    let metrics = proxy.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("switchyard_requests_total") && l.contains("upstream=\"next\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_percent_holds_on_real_traffic() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(app.addr, next.addr, "percent: 20", "")).await;
    let c = client();
    for _ in 0..500 {
        get(&c, &proxy.url("/")).await;
    }
    let v = wait_shadow(&proxy, "settled", |v| {
        v["in_flight"] == 0 && settled(v) == n(v, "success")
    })
    .await;
    let shadowed = n(&v, "success");
    // 20% of 500 is 100; within 2 points is 90 to 110.
    assert!((90..=110).contains(&shadowed), "{shadowed} of 500: {v}");
    assert_eq!(next.got().len() as u64, shadowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sampling_shadows_a_user_always_or_never() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 30, sample: sticky",
        "    sticky: { header: x-user-id }\n",
    ))
    .await;
    let c = client();
    for round in 0..3 {
        for user in 0..60 {
            let id = format!("user-{user}");
            get_with(&c, &proxy.url(&format!("/r{round}")), &[("x-user-id", &id)]).await;
        }
    }
    wait_shadow(&proxy, "settled", |v| {
        v["in_flight"] == 0 && settled(v) == n(v, "success")
    })
    .await;
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for g in next.got() {
        *per_user
            .entry(g.headers["x-user-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(!per_user.is_empty() && per_user.len() < 60, "{per_user:?}");
    assert!(
        per_user.values().all(|&n| n == 3),
        "a user was shadowed only sometimes: {per_user:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_says_which_routes_have_no_shadow() {
    let app = TestBackend::start("app").await;
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\nroutes:\n  - name: plain\n    split: [{{ upstream: app, weight: 1 }}]\n",
        app.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let r = get(&c, &proxy.admin_url("/shadow/plain")).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("has no `shadow`"), "{}", r.text());
    let r = get(&c, &proxy.admin_url("/shadow/nope")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_counts_survive_a_reload_and_a_new_shadow_upstream_starts_its_own() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let other = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let yaml = |upstream: &str, percent: u32| {
        format!(
            "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\n  next: {{ backends: [\"{}\"] }}\n  other: {{ backends: [\"{}\"] }}\n\
             routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: {upstream}, percent: {percent} }}\n",
            app.addr, next.addr, other.addr
        )
    };
    let proxy = Proxy::start(&yaml("next", 100)).await;
    let c = client();
    for _ in 0..3 {
        get(&c, &proxy.url("/")).await;
    }
    wait_shadow(&proxy, "settled", |v| n(v, "success") == 3).await;
    let ev = proxy.rewrite(&yaml("next", 99)).await;
    assert_eq!(ev.rejected, 0);
    get(&c, &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "kept counting", |v| n(v, "success") == 4).await;
    assert_eq!(v["percent"], 99.0);
    // Another shadow upstream: its own series, from zero.
    proxy.rewrite(&yaml("other", 100)).await;
    get(&c, &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "counted the new upstream", |v| n(v, "success") == 1).await;
    assert_eq!(v["upstream"], "other");
    assert_eq!(other.got().len(), 1);
    assert_eq!(next.got().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_completes_is_not_mirrored_and_h2_requests_are() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 100, methods: [GET, POST]",
        "",
    ))
    .await;
    // Half a chunked body, then the client goes away.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /count HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    app.wait_for_path("/count").await;
    drop(s);
    let v = wait_shadow(&proxy, "abandoned the copy", |v| n(v, "abandoned") == 1).await;
    assert_eq!(settled(&v), 1, "{v}");
    // HTTP/2 from the client: the copy goes out as HTTP/1.1 with the same request.
    let r = get(&client::h2c_client(), &proxy.url("/h2?x=1")).await;
    assert_eq!(r.status, 200);
    let v = wait_shadow(&proxy, "sent the h2 copy", |v| n(v, "success") == 1).await;
    assert_eq!(settled(&v), 2, "{v}");
    let got = next.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/h2");
    assert_eq!(got[0].headers["x-switchyard-shadow"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_retries_mirrors_the_body_it_kept_for_replay() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 100, max_body_bytes: 1024",
        "    retries: { attempts: 1 }\n",
    ))
    .await;
    let put = |body: Vec<u8>| {
        Request::put(proxy.url("/count"))
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let c = client();
    assert_eq!(send(&c, put(vec![5; 100])).await.text(), "100\n");
    assert_eq!(send(&c, put(vec![6; 2000])).await.text(), "2000\n");
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 2 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(n(&v, "success"), 1, "{v}");
    assert_eq!(n(&v, "skipped_body_too_large"), 1, "{v}");
    let got = next.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, vec![5u8; 100]);
}
