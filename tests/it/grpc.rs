//! gRPC through switchyard to real grpcio servers (h2c both ways): trailers reach the client,
//! `grpc-status` is classified where it arrives (failures open breakers and retry, NOT_FOUND
//! counts as the backend's success), switchyard's own errors are gRPC statuses, `grpc-timeout`
//! bounds the wait, and the gRPC health protocol takes a NOT_SERVING backend out.

use crate::support::client::h2c_client;
use crate::support::grpc::{GrpcPeer, call, python_call};
use crate::support::proxy::sample;
use crate::support::*;

fn upstream(name: &str, peers: &[&GrpcPeer], extra: &str) -> String {
    let list = peers
        .iter()
        .map(|p| format!("'{}'", p.addr))
        .collect::<Vec<_>>()
        .join(", ");
    format!("  {name}:\n    protocol: http2\n    backends: [{list}]\n{extra}")
}

const UNARY: &str = "/test.Echo/Unary";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_through_a_weighted_split_keep_their_trailers() {
    let (a, b) = (GrpcPeer::start("a").await, GrpcPeer::start("b").await);
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}{}routes:\n  - name: r\n    split: [{{ upstream: blue, weight: 1 }}, {{ upstream: green, weight: 1 }}]\n",
        upstream("blue", &[&a], ""),
        upstream("green", &[&b], "")
    ))
    .await;
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/');
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let r = call(&c, base, UNARY, format!("hi{i}").as_bytes(), &[]).await;
        assert_eq!((r.http_status, r.grpc_status), (200, Some(0)), "{r:?}");
        let text = r.text();
        assert!(text.ends_with(&format!(":hi{i}")), "{text}");
        seen.insert(text.split(':').next().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "both sides of the split answered: {seen:?}");

    // A server stream: every message, then the status in the trailers.
    let r = call(&c, base, "/test.Echo/Stream", b"3", &[]).await;
    assert_eq!(r.messages.len(), 3, "{r:?}");
    assert!(r.trailers.is_some(), "trailers reached the client: {r:?}");
    assert_eq!(r.grpc_status, Some(0));
    // ...and one that ends with an error status after its messages.
    let r = call(&c, base, "/test.Echo/Stream", b"2:status:5", &[]).await;
    assert_eq!(r.messages.len(), 2, "{r:?}");
    let t = r.trailers.as_ref().expect("trailers");
    assert_eq!(t["grpc-status"], "5");
    assert!(
        r.grpc_message
            .unwrap()
            .contains("stream ended with status 5")
    );

    // grpcio's own client, through switchyard.
    let out = python_call(proxy.addr, UNARY, "from-python", 10.0).await;
    assert!(
        out.starts_with("OK ") && out.ends_with(":from-python"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_opens_the_breaker_and_not_found_does_not_count() {
    let (bad, good) = (GrpcPeer::start("bad").await, GrpcPeer::start("good").await);
    let lookup = GrpcPeer::start("lookup").await;
    let breaker = "    circuit_breaker: { consecutive_failures: 3, open_for: 60s }\n";
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}{}routes:\n  - name: lookup\n    match: {{ headers: {{ x-svc: lookup }} }}\n    split: [{{ upstream: lookup, weight: 1 }}]\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        upstream("app", &[&bad, &good], breaker),
        upstream("lookup", &[&lookup], breaker),
    ))
    .await;
    bad.control("fail:14").await;
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/');
    let mut unavailable = 0;
    for _ in 0..40 {
        let r = call(&c, base, UNARY, b"x", &[]).await;
        assert_eq!(r.http_status, 200);
        match r.grpc_status {
            Some(0) => assert!(r.text().starts_with("good:"), "{r:?}"),
            Some(14) => unavailable += 1,
            other => panic!("unexpected status {other:?}: {r:?}"),
        }
    }
    assert!(unavailable >= 3, "the failing backend was reached");
    assert!(unavailable < 20, "and then left alone: {unavailable}");
    let s = proxy.backend_status("app", bad.addr).await;
    assert_eq!(s["breaker"]["state"], "open", "{s}");
    assert_eq!(s["outcomes"]["5xx"], unavailable, "{s}");
    // The healthy backend's answers were all successes.
    let s = proxy.backend_status("app", good.addr).await;
    assert_eq!(s["outcomes"]["5xx"], 0, "{s}");

    // NOT_FOUND is the caller's mistake: the backend succeeded every time.
    for _ in 0..10 {
        let r = call(&c, base, UNARY, b"status:5", &[("x-svc", "lookup")]).await;
        assert_eq!(r.grpc_status, Some(5), "{r:?}");
    }
    let s = proxy.backend_status("lookup", lookup.addr).await;
    assert_eq!(s["breaker"]["state"], "closed", "{s}");
    assert_eq!(s["outcomes"]["success"], 10, "{s}");
    assert_eq!(s["outcomes"]["5xx"], 0, "{s}");
    // A stream ending in INTERNAL after its messages: classified when its trailers arrive.
    for _ in 0..3 {
        let r = call(
            &c,
            base,
            "/test.Echo/Stream",
            b"1:status:13",
            &[("x-svc", "lookup")],
        )
        .await;
        assert_eq!((r.messages.len(), r.grpc_status), (1, Some(13)), "{r:?}");
    }
    proxy
        .wait_backend("lookup", lookup.addr, "open", |s| {
            s["breaker"]["state"] == "open"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_unavailable_is_retried_when_the_route_says_so() {
    let (bad, good) = (GrpcPeer::start("bad").await, GrpcPeer::start("good").await);
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    retries: {{ attempts: 1, on: [unavailable], min_per_second: 100 }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
        upstream("app", &[&bad, &good], ""),
    ))
    .await;
    bad.control("fail:14").await;
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/');
    for _ in 0..20 {
        let r = call(&c, base, UNARY, b"x", &[]).await;
        assert_eq!(r.grpc_status, Some(0), "{r:?}");
        assert_eq!(r.text(), "good:x");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyards_own_errors_are_grpc_statuses_and_grpc_timeout_bounds_the_wait() {
    let peer = GrpcPeer::start("slow").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}  gone:\n    protocol: http2\n    backends: ['{dead_addr}']\nroutes:\n  - name: gone\n    match: {{ path_prefix: /gone. }}\n    split: [{{ upstream: gone, weight: 1 }}]\n  - name: r\n    match: {{ path_prefix: /test. }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
        upstream("app", &[&peer], ""),
    ))
    .await;
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/');

    let r = call(&c, base, "/gone.Svc/Call", b"x", &[]).await;
    assert_eq!((r.http_status, r.grpc_status), (200, Some(14)), "{r:?}");
    assert!(r.trailers.is_none(), "trailers-only");
    assert!(r.grpc_message.unwrap().contains("cannot connect"));

    let r = call(&c, base, "/nowhere.Svc/Call", b"x", &[]).await;
    assert_eq!(
        (r.http_status, r.grpc_status),
        (200, Some(12)),
        "no route: UNIMPLEMENTED {r:?}"
    );

    // The client allows 300 ms; the route would wait 15 s.
    let r = call(&c, base, UNARY, b"sleep:20000", &[("grpc-timeout", "300m")]).await;
    assert_eq!((r.http_status, r.grpc_status), (200, Some(4)), "{r:?}");
    assert_eq!(
        r.headers["x-switchyard-error"], "timeout",
        "switchyard gave it: {r:?}"
    );

    // The deadline reaches the backend (grpcio's client sends grpc-timeout; the server sees it).
    let out = python_call(proxy.addr, UNARY, "deadline", 5.0).await;
    let left: i64 = out
        .strip_prefix("OK ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        (1..=5000).contains(&left),
        "the backend saw the client's deadline: {left} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_health_check_takes_a_not_serving_backend_out() {
    let (a, b) = (GrpcPeer::start("a").await, GrpcPeer::start("b").await);
    let check = "    health_check: { grpc: { service: test.Echo }, interval: 50ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 2 }\n";
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        upstream("app", &[&a, &b], check),
    ))
    .await;
    b.control("health:NOT_SERVING").await;
    proxy
        .wait_backend("app", b.addr, "unhealthy", |s| s["healthy"] == false)
        .await;
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/');
    for _ in 0..20 {
        let r = call(&c, base, UNARY, b"x", &[]).await;
        assert_eq!(r.text(), "a:x", "{r:?}");
    }
    b.control("health:SERVING").await;
    proxy
        .wait_backend("app", b.addr, "healthy", |s| s["healthy"] == true)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_unavailable_is_rolled_back_by_its_gates() {
    let (stable, canary) = (
        GrpcPeer::start("stable").await,
        GrpcPeer::start("canary").await,
    );
    canary.control("fail:14").await;
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}{}routes:\n  - name: r\n    split: [{{ upstream: stable, weight: 100 }}, {{ upstream: canary, weight: 0 }}]\n    rollout: {{ strategy: canary, stable: stable, canary: canary, steps: [20, 50, 100], step_interval: 200ms, gates: {{ min_requests: 20, max_error_rate: 0.01, abort_error_rate: 0.5, max_p99_ms: 5000 }} }}\n",
        upstream("stable", &[&stable], ""),
        upstream("canary", &[&canary], "    circuit_breaker: { enabled: false }\n"),
    ))
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, base) = (std::sync::Arc::clone(&stop), proxy.url(""));
        load.push(tokio::spawn(async move {
            let c = h2c_client();
            let base = base.trim_end_matches('/');
            let mut statuses = Vec::new();
            // Bounded: at most 2,000 calls per task.
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                statuses.push(call(&c, base, UNARY, b"x", &[]).await.grpc_status);
            }
            statuses
        }));
    }
    let v =
        crate::rollout::wait_rollout(&proxy, "rolled back", |v| v["state"] == "rolled-back").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = 0;
    for l in load {
        failed += l.await.unwrap().iter().filter(|s| **s == Some(14)).count();
    }
    assert!(
        failed > 0,
        "the canary's UNAVAILABLE reached clients before the rollback"
    );
    let d = &v["last_decision"];
    assert_eq!(d["verdict"], "rollback", "{d:#}");
    let rate = d["inputs"]["canary"]["error_rate"].as_f64().unwrap();
    assert!(
        rate > 0.5,
        "the canary's gRPC failures are its error rate: {d:#}"
    );
    // Rolled back: every call goes to stable and succeeds.
    let c = h2c_client();
    let base = proxy.url("");
    for _ in 0..20 {
        let r = call(&c, base.trim_end_matches('/'), UNARY, b"x", &[]).await;
        assert_eq!((r.grpc_status, r.text().as_str()), (Some(0), "stable:x"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_during_a_call_is_a_failure_not_a_success() {
    let mut peer = GrpcPeer::start("dying").await;
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        upstream("app", &[&peer], ""),
    ))
    .await;
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/').to_owned();
    // A call the backend holds (sleep) is in flight when the process dies.
    let (c2, b2) = (c.clone(), base.clone());
    let call_task = tokio::spawn(async move {
        let mut framed = vec![0u8, 0, 0, 0, 11];
        framed.extend_from_slice(b"sleep:20000");
        let req = http::Request::post(format!("{b2}{UNARY}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
            .unwrap();
        match c2.request(req).await {
            Ok(resp) => {
                use http_body_util::BodyExt;
                let (parts, body) = resp.into_parts();
                match body.collect().await {
                    Ok(col) => format!(
                        "status {:?} trailers {:?} head {:?}",
                        parts.status,
                        col.trailers().and_then(|t| t.get("grpc-status").cloned()),
                        parts.headers.get("grpc-status")
                    ),
                    Err(e) => format!("body broke: {e}"),
                }
            }
            Err(e) => format!("request broke: {e}"),
        }
    });
    proxy
        .wait_backend("app", peer.addr, "busy", |s| s["in_flight"] == 1)
        .await;
    peer.kill();
    let out = call_task.await.unwrap();
    assert!(
        !out.contains("Some(\"0\")"),
        "a call cut off by the backend's death is not OK: {out}"
    );
    let s = proxy
        .wait_backend("app", peer.addr, "settled", |s| s["in_flight"] == 0)
        .await;
    assert_eq!(s["outcomes"]["success"], 0, "{s}");
    let failures =
        s["outcomes"]["reset"].as_u64().unwrap() + s["outcomes"]["5xx"].as_u64().unwrap();
    assert_eq!(failures, 1, "counted against the backend once: {s}");
}

/// A request body fed message by message by the test.
struct Messages(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for Messages {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn message(payload: &[u8]) -> bytes::Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    bytes::Bytes::from(framed)
}

/// A bidirectional call where the server speaks first (a subscription, a chat): the call
/// reaches the backend before the client has sent a message, and both directions flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidi_call_where_the_server_speaks_first_reaches_it_at_once() {
    use http_body_util::BodyExt;
    let peer = GrpcPeer::start("p").await;
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        upstream("app", &[&peer], "")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = http::Request::post(proxy.url("/test.Echo/Greet"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Messages(rx))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let mut body = resp.into_body();
    let mut next = async || loop {
        let frame = body.frame().await.expect("the stream ended").unwrap();
        if let Ok(data) = frame.into_data() {
            return data;
        }
    };
    // The server's greeting, with nothing sent yet.
    assert!(next().await.ends_with(b"p:hello"));
    tx.send(message(b"again")).await.unwrap();
    assert!(next().await.ends_with(b"p:again"));
    drop(tx);
}

/// An upstream's `grpc_failures` make RESOURCE_EXHAUSTED a failure there like UNAVAILABLE:
/// its breaker opens, a route retries it, a shadow copy counts it; the same answers from the
/// same server through an upstream that does not list it are successes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_grpc_status_fails_like_the_default_five_and_only_where_listed() {
    let (busy, good) = (GrpcPeer::start("busy").await, GrpcPeer::start("good").await);
    busy.control("fail:8").await;
    let breaker = "    circuit_breaker: { consecutive_failures: 3, open_for: 60s }\n";
    let counted = format!("    grpc_failures: [RESOURCE_EXHAUSTED]\n{breaker}");
    let by_header = |name: &str, upstream: &str, extra: &str| {
        format!(
            "  - name: {name}\n    match: {{ headers: {{ x-svc: {name} }} }}\n{extra}    split: [{{ upstream: {upstream}, weight: 1 }}]\n"
        )
    };
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n{}{}{}{}{}routes:\n{}{}{}  - name: r\n    split: [{{ upstream: ok, weight: 1 }}]\n    shadow: {{ upstream: mirror, percent: 100, methods: [POST] }}\n",
        upstream("counted", &[&busy], &counted),
        upstream("plain", &[&busy], breaker),
        upstream("pool", &[&busy, &good], "    grpc_failures: [8]\n"),
        upstream("ok", &[&good], ""),
        upstream(
            "mirror",
            &[&busy],
            "    grpc_failures: [resource-exhausted]\n    circuit_breaker: { enabled: false }\n"
        ),
        by_header("counted", "counted", ""),
        by_header("plain", "plain", ""),
        by_header(
            "pool",
            "pool",
            "    retries: { attempts: 1, on: [RESOURCE_EXHAUSTED], min_per_second: 100 }\n"
        ),
    ))
    .await;
    // `/status` shows what each upstream adds to the default five, by name, and only where set.
    let status = proxy.status().await;
    let listed = |name: &str| {
        status["upstreams"]
            .as_array()
            .and_then(|ups| ups.iter().find(|u| u["name"] == name))
            .map(|u| u["grpc_failures"].clone())
            .unwrap_or_else(|| panic!("no upstream {name} in {status}"))
    };
    assert_eq!(listed("counted"), serde_json::json!(["RESOURCE_EXHAUSTED"]));
    assert_eq!(listed("pool"), serde_json::json!(["RESOURCE_EXHAUSTED"]));
    assert_eq!(
        listed("plain"),
        serde_json::Value::Null,
        "not set: not shown"
    );
    let c = h2c_client();
    let base = proxy.url("");
    let base = base.trim_end_matches('/');

    // Listed: a failure, so the breaker opens after three and the rest are turned away
    // (switchyard's own UNAVAILABLE).
    let mut exhausted = 0;
    for _ in 0..10 {
        let r = call(&c, base, UNARY, b"x", &[("x-svc", "counted")]).await;
        match r.grpc_status {
            Some(8) => exhausted += 1,
            Some(14) => {}
            other => panic!("unexpected status {other:?}: {r:?}"),
        }
    }
    // (A call's record may land a moment after its client has the answer.)
    let s = proxy
        .wait_backend("counted", busy.addr, "counted", |s| {
            s["outcomes"]["5xx"] == exhausted
        })
        .await;
    assert_eq!(s["breaker"]["state"], "open", "{s}");
    assert!(
        (3..=5).contains(&exhausted),
        "three (give or take a record still landing) reached the backend before its breaker opened: {s}"
    );
    assert_eq!(s["outcomes"]["success"], 0, "{s}");
    // What the clients got, by gRPC status: the backend's, then switchyard's own.
    let series = |code: &str| {
        format!(
            "switchyard_grpc_responses_total{{route=\"counted\",upstream=\"counted\",code=\"{code}\"}}"
        )
    };
    let turned_away = 10.0 - exhausted as f64;
    let m = proxy.wait_metric(&series("UNAVAILABLE"), turned_away).await;
    assert_eq!(sample(&m, &series("UNAVAILABLE")), Some(turned_away), "{m}");
    assert_eq!(
        sample(&m, &series("RESOURCE_EXHAUSTED")),
        Some(exhausted as f64),
        "{m}"
    );
    assert_eq!(sample(&m, &series("OK")), None, "{m}");

    // Not listed: the same answers from the same server are the caller's business.
    for _ in 0..10 {
        let r = call(&c, base, UNARY, b"x", &[("x-svc", "plain")]).await;
        assert_eq!(r.grpc_status, Some(8), "{r:?}");
    }
    let s = proxy
        .wait_backend("plain", busy.addr, "counted", |s| {
            s["outcomes"]["success"] == 10
        })
        .await;
    assert_eq!(s["breaker"]["state"], "closed", "{s}");
    assert_eq!(s["outcomes"]["5xx"], 0, "{s}");

    // Listed (by number) and named in the route's `retries.on`: a trailers-only
    // RESOURCE_EXHAUSTED goes to the other backend.
    for _ in 0..20 {
        let r = call(&c, base, UNARY, b"x", &[("x-svc", "pool")]).await;
        assert_eq!(
            (r.grpc_status, r.text().as_str()),
            (Some(0), "good:x"),
            "{r:?}"
        );
    }
    let s = proxy.backend_status("pool", busy.addr).await;
    assert!(
        s["outcomes"]["5xx"].as_u64().unwrap() >= 1,
        "the busy backend was tried and its answer retried: {s}"
    );
    assert_eq!(s["outcomes"]["success"], 0, "{s}");

    // A shadow copy answered RESOURCE_EXHAUSTED by an upstream that lists it: a failed copy.
    for _ in 0..5 {
        let r = call(&c, base, UNARY, b"x", &[]).await;
        assert_eq!(
            (r.grpc_status, r.text().as_str()),
            (Some(0), "good:x"),
            "{r:?}"
        );
    }
    let v = crate::shadow::wait_shadow(&proxy, "settled", |v| {
        crate::shadow::settled(v) == 5 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(crate::shadow::n(&v, "5xx"), 5, "{v}");
}
