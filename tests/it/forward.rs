//! What crosses the proxy: headers, errors, h2c, WebSocket, large bodies, pooled connections.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use crate::support::client::h2c_client;
use crate::support::*;

fn one_route(b: &TestBackend, route_extra: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  app: {{ backends: {} }}\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    split: [{{ upstream: app, weight: 1 }}]\n{route_extra}",
        addrs(&[b])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_removed() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&one_route(&app, "")).await;
    let c = client();
    let r = get_with(
        &c,
        &proxy.url("/h?q=1"),
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &app.seen()[0];
    let h = &seen.headers;
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/h?q=1");
    assert_eq!(h["host"], "shop.example.com");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "the client's claim is replaced"
    );
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in ["x-hop", "keep-alive", "te"] {
        assert!(!h.contains_key(gone), "{gone} reached the backend");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_their_status_and_a_short_cause() {
    let app = TestBackend::start("app").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "{HEAD}upstreams:\n  app: {{ backends: {} }}\n  dead: {{ backends: [\"{closed}\"], connect_timeout: 2s }}\n\
         routes:\n  - name: app\n    match: {{ path_prefix: /sleep }}\n    timeout: 300ms\n    split: [{{ upstream: app, weight: 1 }}]\n\
         \x20 - name: dead\n    match: {{ path_prefix: /dead }}\n    split: [{{ upstream: dead, weight: 1 }}]\n",
        addrs(&[&app])
    );
    let proxy = Proxy::start(&config).await;
    let c = client();

    let r = get(&c, &proxy.url("/nowhere")).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route"), "{}", r.text());
    assert_eq!(r.headers["x-switchyard-error"], "no-route");

    let r = get(&c, &proxy.url("/dead")).await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("cannot connect to upstream `dead`"),
        "{}",
        r.text()
    );
    assert!(
        !r.text().contains(&closed.to_string()),
        "backend addresses stay private"
    );

    let r = get(&c, &proxy.url("/sleep/3000")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.headers["x-switchyard-error"], "timeout");

    let metrics = get(&c, &proxy.admin_url("/metrics")).await;
    let m = metrics.text();
    assert!(m.contains(&format!(
        "switchyard_requests_total{{route=\"dead\",upstream=\"dead\",backend=\"{closed}\",code_class=\"5xx\"}} 1"
    )), "{m}");
    assert!(m.contains("switchyard_unrouted_requests_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_reach_an_http1_backend() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&one_route(&app, "")).await;
    let c = h2c_client();
    let req = Request::get(proxy.url("/over-h2"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::default())
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "app\n");
    let seen = &app.seen()[0];
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], proxy.addr.to_string().as_str());
    assert_eq!(seen.headers["cookie"], "a=1; b=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&one_route(&app, "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "through", "switchyard"] {
        ws.send(msg.into()).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.to_text().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&one_route(&app, "")).await;
    let c = client();

    let resp = c
        .request(
            Request::get(proxy.url(&format!("/bytes/{SIZE}")))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);

    let upload = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>,
    >>();
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = (SIZE / chunk.len() as u64) as usize;
    let stream =
        futures_util::stream::iter((0..chunks).map(move |_| Ok(Frame::data(chunk.clone()))))
            .boxed();
    let resp = upload
        .request(
            Request::post(proxy.url("/count"))
                .body(StreamBody::new(stream))
                .unwrap(),
        )
        .await
        .unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&text).unwrap().trim(), SIZE.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&one_route(&app, "")).await;
    let c = client();
    for _ in 0..200 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    assert_eq!(app.count(), 200);
    assert!(
        app.connections() <= 2,
        "{} connections for 200 sequential requests",
        app.connections()
    );
}

/// In-flight requests over every backend, as `/metrics` reports them.
async fn in_flight(proxy: &Proxy, c: &crate::support::client::TestClient) -> u64 {
    let m = get(c, &proxy.admin_url("/metrics")).await;
    m.text()
        .lines()
        .filter(|l| l.starts_with("switchyard_backend_in_flight{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_in_flight_until_its_last_byte() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&one_route(&app, "")).await;
    let c = client();
    let resp = c
        .request(
            Request::get(proxy.url("/stream/k"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first\n");
    assert_eq!(
        in_flight(&proxy, &c).await,
        1,
        "headers sent, body still streaming"
    );
    app.release("k");
    assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"rest\n");
    assert_eq!(in_flight(&proxy, &c).await, 0);
    // The finished connection went back to the pool and is reused.
    assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    assert_eq!(app.connections(), 1);
}
