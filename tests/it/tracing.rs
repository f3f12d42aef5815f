//! Trace context and span export, against real backends and a real OTLP/HTTP collector
//! (`tests/support/otlp_receiver.py`, which decodes with the official `opentelemetry-proto`):
//! the ids the backends saw are the ids the collector decoded.

use serde_json::Value;

use crate::support::otlp::{Collector, of_trace, traceparent};
use crate::support::proxy::sample;
use crate::support::*;

const INCOMING_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const INCOMING_SPAN: &str = "b7ad6b7169203331";

fn incoming(sampled: bool) -> String {
    format!(
        "00-{INCOMING_TRACE}-{INCOMING_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// `tracing:` exporting to `collector` at `ratio`, flushing fast.
fn tracing_block(collector: &str, ratio: &str, extra: &str) -> String {
    format!(
        "tracing:\n  sample_ratio: {ratio}\n  service_name: edge-test\n  otlp:\n    endpoint: \"{collector}\"\n    flush_interval: 20ms\n{extra}"
    )
}

fn one_route(backends: &[&TestBackend], route_extra: &str) -> String {
    format!(
        "upstreams:\n  app: {{ backends: {}, circuit_breaker: {{ enabled: false }} }}\nroutes:\n  - name: shop\n    split: [{{ upstream: app, weight: 1 }}]\n{route_extra}",
        addrs(backends)
    )
}

/// The `traceparent` of every request `b` saw, in order (health checks left out).
fn seen_traceparents(b: &TestBackend) -> Vec<String> {
    b.seen()
        .iter()
        .filter(|s| s.uri.path() != "/healthz")
        .map(|s| {
            let all: Vec<_> = s.headers.get_all("traceparent").iter().collect();
            assert_eq!(all.len(), 1, "exactly one traceparent: {:?}", s.headers);
            all[0].to_str().unwrap().to_owned()
        })
        .collect()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_passed_on_without_export() {
    let b = TestBackend::start("b").await;
    let proxy = Proxy::start(&format!("{HEAD}{}", one_route(&[&b], ""))).await;
    let c = client();

    // A caller's trace continues: same trace, switchyard's own span as the parent, the
    // caller's flag and tracestate kept.
    let r = get_with(
        &c,
        &proxy.url("/a"),
        &[
            ("traceparent", &incoming(true)),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = b.seen();
    let (trace, parent, sampled) = traceparent(&seen_traceparents(&b)[0]);
    assert_eq!(trace, INCOMING_TRACE);
    assert_ne!(parent, INCOMING_SPAN);
    assert!(sampled);
    assert_eq!(
        seen[0].headers["tracestate"],
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );

    // No traceparent: a new trace, not sampled (nothing records it). An invalid one (upper
    // case) restarts the trace and drops its tracestate.
    get(&c, &proxy.url("/b")).await;
    let bad = incoming(true).to_uppercase();
    get_with(
        &c,
        &proxy.url("/c"),
        &[("traceparent", &bad), ("tracestate", "congo=1")],
    )
    .await;
    let tps = seen_traceparents(&b);
    let (t_new, _, s_new) = traceparent(&tps[1]);
    let (t_bad, _, _) = traceparent(&tps[2]);
    assert!(
        !s_new,
        "new traces are unsampled without export: {}",
        tps[1]
    );
    assert!(t_new != INCOMING_TRACE && t_bad != INCOMING_TRACE);
    assert_ne!(t_new, t_bad);
    assert!(b.seen()[2].headers.get("tracestate").is_none());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_propagate_off_trace_headers_pass_as_they_came() {
    let b = TestBackend::start("b").await;
    let proxy = Proxy::start(&format!(
        "{HEAD}{}tracing: {{ propagate: false }}\n",
        one_route(&[&b], "")
    ))
    .await;
    let c = client();
    // Even what switchyard would otherwise restart (upper case) or join goes through as is.
    let bad = incoming(true).to_uppercase();
    let r = get_with(
        &c,
        &proxy.url("/a"),
        &[
            ("traceparent", &bad),
            ("tracestate", "congo=1"),
            ("tracestate", "rojo=2"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    get(&c, &proxy.url("/b")).await;
    let seen = b.seen();
    assert_eq!(seen[0].headers["traceparent"], bad.as_str());
    let states: Vec<_> = seen[0].headers.get_all("tracestate").iter().collect();
    assert_eq!(states, ["congo=1", "rojo=2"]);
    assert!(
        seen[1].headers.get("traceparent").is_none(),
        "no trace is started"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_collector_with_the_ids_the_backend_saw() {
    let collector = Collector::start(&[]);
    let (b, next) = (
        TestBackend::start("b").await,
        TestBackend::start("next").await,
    );
    let config = format!(
        "{HEAD}{}upstreams:\n  app: {{ backends: {} }}\n  next: {{ backends: {} }}\nroutes:\n  - name: shop\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: next, percent: 100 }}\n",
        tracing_block(
            &collector.endpoint(),
            "1.0",
            "    headers: { authorization: \"Bearer t0ken\" }\n"
        ),
        addrs(&[&b]),
        addrs(&[&next]),
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    let r = get_with(
        &c,
        &proxy.url("/cart?card=1234"),
        &[
            ("traceparent", &incoming(true)),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("user-agent", "trace-test/1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let spans = collector
        .wait_spans("server and client span", |s| {
            of_trace(s, INCOMING_TRACE).len() >= 2
        })
        .await;
    let ours = of_trace(&spans, INCOMING_TRACE);
    assert_eq!(ours.len(), 2, "{ours:#?}");
    let server = ours
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .unwrap();
    let client_span = ours
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .unwrap();

    // The server span hangs under the caller's span; the client span under the server span;
    // the backend saw the client span as its parent.
    assert_eq!(server["parent_span_id"], INCOMING_SPAN);
    assert_eq!(client_span["parent_span_id"], server["span_id"]);
    let (trace, parent, sampled) = traceparent(&seen_traceparents(&b)[0]);
    assert_eq!(trace, INCOMING_TRACE);
    assert_eq!(parent, client_span["span_id"].as_str().unwrap());
    assert!(sampled);
    // A shadow copy names switchyard's server span as its parent.
    next.wait_for_path("/cart").await;
    let (strace, sparent, _) = traceparent(&seen_traceparents(&next)[0]);
    assert_eq!(
        (strace.as_str(), sparent.as_str()),
        (INCOMING_TRACE, server["span_id"].as_str().unwrap())
    );

    // What the spans say, in OpenTelemetry's HTTP terms.
    assert_eq!(server["name"], "GET shop");
    assert_eq!(server["trace_state"], "congo=t61rcWkgMzE");
    assert_eq!(
        server["flags"].as_u64().unwrap() & 0x3ff,
        0x301,
        "sampled, remote parent"
    );
    assert_eq!(attr(server, "http.request.method"), "GET");
    assert_eq!(attr(server, "url.path"), "/cart");
    assert_eq!(attr(server, "url.scheme"), "http");
    assert_eq!(attr(server, "http.response.status_code"), 200);
    assert_eq!(attr(server, "user_agent.original"), "trace-test/1");
    assert_eq!(attr(server, "client.address"), "127.0.0.1");
    assert_eq!(attr(server, "switchyard.route"), "shop");
    assert_eq!(attr(server, "switchyard.upstream"), "app");
    assert_eq!(
        attr(server, "switchyard.backend"),
        b.addr.to_string().as_str()
    );
    assert_eq!(attr(server, "switchyard.attempts"), 1);
    assert!(attr(server, "switchyard.error").is_null());
    assert_eq!(server["status_code"], "STATUS_CODE_UNSET");
    assert_eq!(client_span["name"], "GET");
    assert_eq!(
        attr(client_span, "url.full"),
        format!("http://{}/cart", b.addr).as_str()
    );
    assert_eq!(attr(client_span, "server.port"), b.addr.port());
    assert_eq!(attr(client_span, "http.response.status_code"), 200);
    assert_eq!(attr(client_span, "network.protocol.version"), "1.1");
    assert!(attr(client_span, "http.request.resend_count").is_null());
    let (s0, s1) = (
        server["start"].as_u64().unwrap(),
        server["end"].as_u64().unwrap(),
    );
    let (c0, c1) = (
        client_span["start"].as_u64().unwrap(),
        client_span["end"].as_u64().unwrap(),
    );
    assert!(
        s0 <= c0 && c0 <= c1 && c1 <= s1,
        "the try lies within the request"
    );
    assert_eq!(server["resource"]["service.name"], "edge-test");
    assert_eq!(server["scope"]["name"], "switchyard");

    // A new trace at 100 %: exported, and sampled for the backend too.
    get(&c, &proxy.url("/new")).await;
    let (new_trace, _, new_sampled) = traceparent(&seen_traceparents(&b)[1]);
    assert!(new_sampled);
    let spans = collector
        .wait_spans("the new trace", |s| of_trace(s, &new_trace).len() >= 2)
        .await;
    let server = of_trace(&spans, &new_trace)
        .into_iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .unwrap();
    assert_eq!(server["parent_span_id"], "", "a root span");
    assert_eq!(
        server["flags"].as_u64().unwrap() & 0x3ff,
        0x101,
        "sampled, local root"
    );

    let posts = collector.wait_posts(1).await;
    assert!(
        posts.iter().all(|p| p["auth"] == "Bearer t0ken"),
        "{posts:?}"
    );
    assert_eq!(collector.errors(), Vec::<String>::new());
    let m = proxy
        .wait_metric("switchyard_trace_spans_exported_total", 4.0)
        .await;
    assert_eq!(
        sample(
            &m,
            "switchyard_trace_spans_dropped_total{reason=\"queue_full\"}"
        ),
        Some(0.0)
    );
    proxy.shutdown().await;
}

/// A try to an HTTP/2 upstream is an HTTP/2 client span (a gRPC call from a client over h2c,
/// to a real grpcio server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_to_an_http2_upstream_says_so_in_its_span() {
    use crate::support::grpc::{GrpcPeer, call};
    let collector = Collector::start(&[]);
    let peer = GrpcPeer::start("p").await;
    let config = format!(
        "{HEAD}{}upstreams:\n  app: {{ protocol: http2, backends: ['{}'] }}\nroutes:\n  - name: rpc\n    split: [{{ upstream: app, weight: 1 }}]\n",
        tracing_block(&collector.endpoint(), "1.0", ""),
        peer.addr,
    );
    let proxy = Proxy::start(&config).await;
    let base = proxy.url("");
    let r = call(
        &crate::support::client::h2c_client(),
        base.trim_end_matches('/'),
        "/test.Echo/Unary",
        b"x",
        &[("traceparent", &incoming(true))],
    )
    .await;
    assert_eq!(r.grpc_status, Some(0), "{r:?}");
    let spans = collector
        .wait_spans("server and client span", |s| {
            of_trace(s, INCOMING_TRACE).len() >= 2
        })
        .await;
    let ours = of_trace(&spans, INCOMING_TRACE);
    let kind = |k: &str| *ours.iter().find(|s| s["kind"] == k).unwrap();
    let (server, client_span) = (kind("SPAN_KIND_SERVER"), kind("SPAN_KIND_CLIENT"));
    assert_eq!(attr(server, "network.protocol.version"), "2", "{server:#}");
    assert_eq!(
        attr(client_span, "network.protocol.version"),
        "2",
        "{client_span:#}"
    );
    assert_eq!(attr(client_span, "http.response.status_code"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_has_one_client_span_per_try() {
    let collector = Collector::start(&[]);
    let (bad, good) = (
        TestBackend::start("bad").await,
        TestBackend::start("good").await,
    );
    bad.set_failing(100);
    let config = format!(
        "{HEAD}{}{}",
        tracing_block(&collector.endpoint(), "1.0", ""),
        one_route(
            &[&bad, &good],
            "    retries: { attempts: 1, on: [5xx], budget_percent: 100 }\n"
        )
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    // Round robin starts half the requests at the failing backend.
    for i in 0..4 {
        assert_eq!(get(&c, &proxy.url(&format!("/r{i}"))).await.status, 200);
    }
    let failed: Vec<(String, String)> = seen_traceparents(&bad)
        .iter()
        .map(|t| {
            let (trace, parent, _) = traceparent(t);
            (trace, parent)
        })
        .collect();
    assert!(
        !failed.is_empty(),
        "no request went to the failing backend first"
    );
    let (trace, first_parent) = &failed[0];
    let second_parent = seen_traceparents(&good)
        .iter()
        .map(|t| traceparent(t))
        .find(|(t, _, _)| t == trace)
        .map(|(_, p, _)| p)
        .expect("the retry reached the good backend in the same trace");
    assert_ne!(&second_parent, first_parent);

    let spans = collector
        .wait_spans("a retried request's three spans", |s| {
            of_trace(s, trace).len() >= 3
        })
        .await;
    let ours = of_trace(&spans, trace);
    assert_eq!(ours.len(), 3, "{ours:#?}");
    let server = ours
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .unwrap();
    let tries: Vec<&&Value> = ours
        .iter()
        .filter(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .collect();
    assert_eq!(tries.len(), 2);
    for t in &tries {
        assert_eq!(t["parent_span_id"], server["span_id"]);
    }
    let first = tries
        .iter()
        .find(|t| t["span_id"] == first_parent.as_str())
        .unwrap();
    let second = tries
        .iter()
        .find(|t| t["span_id"] == second_parent.as_str())
        .unwrap();
    assert_eq!(attr(first, "http.response.status_code"), 500);
    assert_eq!(attr(first, "error.type"), "500");
    assert_eq!(first["status_code"], "STATUS_CODE_ERROR");
    assert!(attr(first, "http.request.resend_count").is_null());
    assert_eq!(attr(second, "http.response.status_code"), 200);
    assert_eq!(attr(second, "http.request.resend_count"), 1);
    assert_eq!(
        attr(second, "switchyard.backend"),
        good.addr.to_string().as_str()
    );
    assert!(first["end"].as_u64() <= second["start"].as_u64());
    // Each try's one classification, as its span's outcome.
    assert_eq!(attr(first, "switchyard.outcome"), "server-error");
    assert_eq!(attr(second, "switchyard.outcome"), "success");
    assert_eq!(attr(server, "switchyard.flags"), "RT");
    assert_eq!(attr(server, "switchyard.attempts"), 2);
    assert_eq!(attr(server, "http.response.status_code"), 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_callers_flag() {
    let collector = Collector::start(&[]);
    let b = TestBackend::start("b").await;
    // 0 %: new traces are neither sampled nor exported; a caller's decision is kept both ways.
    let config = format!(
        "{HEAD}{}{}",
        tracing_block(&collector.endpoint(), "0", ""),
        one_route(&[&b], "")
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    for i in 0..20 {
        get(&c, &proxy.url(&format!("/n{i}"))).await;
    }
    get_with(&c, &proxy.url("/off"), &[("traceparent", &incoming(false))]).await;
    // The marker: sampled by its caller, so exported; the queue is in order, so once it is
    // in, anything sampled before it would be too.
    let marker = "4bf92f3577b34da6a3ce929d0e0e4736";
    get_with(
        &c,
        &proxy.url("/marker"),
        &[("traceparent", &format!("00-{marker}-00f067aa0ba902b7-01"))],
    )
    .await;
    let tps = seen_traceparents(&b);
    assert!(tps[..20].iter().all(|t| !traceparent(t).2), "{tps:?}");
    let (off_trace, _, off_sampled) = traceparent(&tps[20]);
    assert_eq!(off_trace, INCOMING_TRACE);
    assert!(!off_sampled, "a caller's sampled-off flag is passed on");
    let spans = collector
        .wait_spans("the marker's spans", |s| of_trace(s, marker).len() >= 2)
        .await;
    assert!(
        spans.iter().all(|s| s["trace_id"] == marker),
        "only the caller-sampled request is exported: {spans:#?}"
    );

    // 100 % (hot-reloaded): every new trace is; a caller that sampled off still is not.
    let ev = proxy
        .rewrite(&format!(
            "{HEAD}{}{}",
            tracing_block(&collector.endpoint(), "1.0", ""),
            one_route(&[&b], "")
        ))
        .await;
    assert_eq!(ev.rejected, 0);
    get_with(
        &c,
        &proxy.url("/off2"),
        &[("traceparent", &incoming(false))],
    )
    .await;
    for i in 0..5 {
        get(&c, &proxy.url(&format!("/all{i}"))).await;
    }
    let tps = seen_traceparents(&b);
    let new: Vec<String> = tps[23..].iter().map(|t| traceparent(t).0).collect();
    assert_eq!(new.len(), 5);
    assert!(tps[23..].iter().all(|t| traceparent(t).2));
    let spans = collector
        .wait_spans("every new trace's spans", |s| {
            new.iter().all(|t| of_trace(s, t).len() == 2)
        })
        .await;
    assert!(of_trace(&spans, INCOMING_TRACE).is_empty(), "{spans:#?}");
    assert_eq!(collector.errors(), Vec::<String>::new());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_only_counted_drops() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = TestBackend::start("b").await;
    let config = format!(
        "{HEAD}{}{}",
        tracing_block(
            &format!("http://{closed}/v1/traces"),
            "1.0",
            "    queue_size: 4\n    batch_size: 2\n    shutdown_timeout: 1s\n"
        ),
        one_route(&[&b], "")
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    for i in 0..30 {
        let r = get(&c, &proxy.url(&format!("/d{i}"))).await;
        assert_eq!(r.status, 200, "a dead collector must not fail requests");
    }
    assert_eq!(b.traffic(), 30);
    // 60 spans, of which only the queue (4) and the batch in the exporter's hands (2) fit while
    // the exporter backs off; 40 leaves room for a slow machine's exporter to cycle once more.
    let m = proxy
        .wait_metric(
            "switchyard_trace_spans_dropped_total{reason=\"queue_full\"}",
            40.0,
        )
        .await;
    assert_eq!(
        sample(&m, "switchyard_trace_spans_exported_total"),
        Some(0.0)
    );
    // Shutdown gives up on the dead collector within its bound (and says what it dropped).
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_export_is_retried_and_shutdown_flushes_what_is_queued() {
    // The collector answers its first export 503 (Retry-After: 0): the batch goes again.
    let collector = Collector::start(&["--fail-first", "1"]);
    let b = TestBackend::start("b").await;
    let config = format!(
        "{HEAD}{}{}",
        tracing_block(&collector.endpoint(), "1.0", ""),
        one_route(&[&b], "")
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    get(&c, &proxy.url("/retried")).await;
    let (trace, _, _) = traceparent(&seen_traceparents(&b)[0]);
    collector
        .wait_spans("the retried batch", |s| of_trace(s, &trace).len() == 2)
        .await;
    let posts = collector.wait_posts(2).await;
    assert_eq!(posts[0]["status"], 503);
    assert_eq!(posts[1]["status"], 200);
    assert_eq!(
        posts[0]["spans"], posts[1]["spans"],
        "the same batch, sent again"
    );
    proxy.shutdown().await;

    // A long flush interval: nothing goes out until shutdown, which sends it all.
    let collector = Collector::start(&[]);
    let config = format!(
        "{HEAD}tracing:\n  sample_ratio: 1\n  otlp: {{ endpoint: \"{}\", flush_interval: 1h }}\n{}",
        collector.endpoint(),
        one_route(&[&b], "")
    );
    let proxy = Proxy::start(&config).await;
    for i in 0..3 {
        get(&c, &proxy.url(&format!("/late{i}"))).await;
    }
    assert!(collector.posts().is_empty());
    assert!(proxy.shutdown().await);
    let posts = collector.wait_posts(1).await;
    assert_eq!(posts[0]["spans"], 6, "{posts:?}");
    assert_eq!(collector.spans().len(), 6);
}
