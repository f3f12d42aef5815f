//! Listener limits on real sockets: oversized heads, slowloris, the connection cap, body size and
//! rate, HTTP/2 settings; each one counted in `/metrics` when it triggers.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::proxy::sample;
use crate::support::raw::{exchange, read_response, read_to_close};
use crate::support::*;

fn config(b: &TestBackend, limits: &str) -> String {
    format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:0\", limits: {limits} }}]\nadmin: {{ bind: \"127.0.0.1:0\" }}\nupstreams:\n  app: {{ backends: {} }}\nroutes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        addrs(&[b])
    )
}

fn series(limit: &str) -> String {
    format!("switchyard_limit_rejections_total{{listener=\"public\",limit=\"{limit}\"}}")
}

async fn hits(proxy: &Proxy, limit: &str) -> f64 {
    let m = proxy.metrics().await;
    let series = series(limit);
    sample(&m, &series).unwrap_or_else(|| panic!("no {series} in {m}"))
}

/// Waits until the counter reaches `n`, then checks it is exactly `n`.
async fn wait_hits(proxy: &Proxy, limit: &str, n: f64) {
    proxy.wait_metric(&series(limit), n).await;
    assert_eq!(hits(proxy, limit).await, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_too_many_headers_get_431() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(
        &app,
        "{ max_request_header_bytes: 8192, max_request_headers: 10 }",
    ))
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(9000)
    );
    let reply = exchange(proxy.addr, big.as_bytes()).await;
    assert_eq!(reply.status(), 431, "{}", reply.text());
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..12 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = exchange(proxy.addr, many.as_bytes()).await;
    assert_eq!(reply.status(), 431, "{}", reply.text());
    assert_eq!(app.traffic(), 0);
    wait_hits(&proxy, "request_headers", 2.0).await;
    // Just under both limits passes.
    let mut fine = String::from("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..7 {
        fine.push_str(&format!("X-H{i}: {}\r\n", "y".repeat(900)));
    }
    fine.push_str("\r\n");
    assert_eq!(exchange(proxy.addr, fine.as_bytes()).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_by_the_header_timeout_also_between_requests() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ header_read_timeout: 1s }")).await;
    // Half a head, then nothing: the proxy closes the connection.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let reply = read_to_close(&mut s).await;
    assert!(reply.bytes.is_empty(), "{}", reply.text());
    // A whole request, then silence on the kept-alive connection: closed too.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status(), 200);
    let rest = read_to_close(&mut s).await;
    assert!(rest.bytes.is_empty(), "{}", rest.text());
    assert_eq!(app.traffic(), 1);
    assert_eq!(hits(&proxy, "header_read_timeout").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ max_connections: 2 }")).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(format!("GET /held{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status(), 200);
        held.push(s);
    }
    let refused = exchange(proxy.addr, b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(refused.bytes.is_empty(), "{}", refused.text());
    assert_eq!(hits(&proxy, "max_connections").await, 1.0);
    assert_eq!(app.traffic(), 2);
    // A slot frees when a connection ends: new connections are served again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..200 {
        let r = exchange(
            proxy.addr,
            b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "the freed slot was never given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_size_limit_get_413_declared_or_streamed() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ max_request_body_bytes: 10 }")).await;
    let declared = exchange(
        proxy.addr,
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert_eq!(declared.status(), 413, "{}", declared.text());
    assert_eq!(app.traffic(), 0);
    let streamed = exchange(
        proxy.addr,
        b"POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(streamed.status(), 413, "{}", streamed.text());
    assert_eq!(hits(&proxy, "max_request_body_bytes").await, 2.0);
    // At the limit is fine.
    let ok = exchange(
        proxy.addr,
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
    )
    .await;
    assert_eq!(ok.status(), 200, "{}", ok.text());
    assert!(ok.text().ends_with("10\n"), "{}", ok.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_gets_408_after_the_grace() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(
        &app,
        "{ min_request_body_rate: { bytes_per_second: 1000, grace: 300ms } }",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nsome bytes")
        .await
        .unwrap();
    let reply = read_to_close(&mut s).await;
    assert_eq!(reply.status(), 408, "{}", reply.text());
    assert_eq!(hits(&proxy, "min_request_body_rate").await, 1.0);
    // The upstream request was sent, then abandoned: the backend never answered it.
    assert_eq!(app.traffic(), 1);
    let m = proxy.metrics().await;
    let ok = format!(
        "switchyard_upstream_outcomes_total{{upstream=\"app\",backend=\"{}\",outcome=\"reset\"}}",
        app.addr
    );
    assert_eq!(
        sample(&m, &ok),
        Some(0.0),
        "a slow client is not the backend's fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_gets_408_on_a_route_that_keeps_bodies_for_retries() {
    // A route with retries reads a small body whole before sending it (to replay it): the
    // listener's rate limit must hold while it does, and nothing reaches the backend.
    let app = TestBackend::start("app").await;
    let cfg = config(
        &app,
        "{ min_request_body_rate: { bytes_per_second: 1000, grace: 300ms } }",
    ) + "    retries: { attempts: 2 }\n";
    let proxy = Proxy::start(&cfg).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nsome bytes")
        .await
        .unwrap();
    let reply = read_to_close(&mut s).await;
    assert_eq!(reply.status(), 408, "{}", reply.text());
    assert_eq!(hits(&proxy, "min_request_body_rate").await, 1.0);
    assert_eq!(
        app.traffic(),
        0,
        "the body was never whole: nothing was sent"
    );
}

/// The settings frame a server sends first, as (id, value) pairs.
async fn server_settings(addr: std::net::SocketAddr) -> Vec<(u16, u32)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
        .await
        .expect("no settings")
        .unwrap();
    assert_eq!(head[3], 4, "the first frame is SETTINGS");
    let len = (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_windows_and_header_lists_are_bounded() {
    let app = TestBackend::start("app").await;
    let defaults = Proxy::start(&config(&app, "{}")).await;
    let settings = server_settings(defaults.addr).await;
    // MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE.
    for (id, value) in [(3, 100), (4, 65_536), (6, 61_440)] {
        assert!(
            settings.contains(&(id, value)),
            "{id}={value} not in {settings:?}"
        );
    }
    let tuned = Proxy::start(&config(
        &app,
        "{ http2: { max_concurrent_streams: 7, initial_stream_window_bytes: 131072 } }",
    ))
    .await;
    let settings = server_settings(tuned.addr).await;
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    assert!(settings.contains(&(4, 131_072)), "{settings:?}");
}

/// Reads frames until a GOAWAY arrives (`true`) or the connection ends (`false`).
async fn until_goaway(s: &mut TcpStream) -> bool {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return false;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return false;
            }
            if head[3] == 7 {
                return true;
            }
        }
    })
    .await
    .expect("the connection neither ended nor got GOAWAY")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_gets_goaway() {
    use crate::smuggling::{PREFACE, frame, h2_headers};
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(
        &app,
        "{ http2: { max_pending_accept_reset_streams: 5 } }",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // Open and cancel 200 streams in one burst (CVE-2023-44487's pattern).
    for i in 0..200u32 {
        let id = 2 * i + 1;
        out.extend(frame(1, 0x5, id, &h2_headers(false, &[])));
        out.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out).await;
    assert!(
        until_goaway(&mut s).await,
        "no GOAWAY for a rapid reset flood"
    );
    drop(s);
    wait_hits(&proxy, "http2_flood", 1.0).await;
    // The proxy still serves others.
    let ok = exchange(
        proxy.addr,
        b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off() {
    use crate::smuggling::{PREFACE, frame, h2_headers};
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ max_request_header_bytes: 16384 }")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // HEADERS without END_HEADERS, then CONTINUATION frames carrying ~1 MiB of header fields.
    out.extend(frame(1, 0x1, 1, &h2_headers(false, &[])));
    let field = h2_headers(false, &[("x-flood", &"z".repeat(100))]);
    let field = &field[6..];
    let mut sent = 0;
    while sent < 1024 * 1024 {
        out.extend(frame(9, 0, 1, field));
        sent += field.len();
    }
    let _ = s.write_all(&out).await;
    let _ = until_goaway(&mut s).await;
    assert_eq!(app.traffic(), 0);
    drop(s);
    wait_hits(&proxy, "http2_flood", 1.0).await;
    let ok = exchange(
        proxy.addr,
        b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use crate::smuggling::{PREFACE, frame, h2_headers};
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ idle_timeout: 1s }")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x5, 1, &h2_headers(false, &[])));
    s.write_all(&out).await.unwrap();
    // The answer comes, then nothing more is asked: the connection ends.
    let _ = until_goaway(&mut s).await;
    assert_eq!(app.traffic(), 1);
    assert_eq!(hits(&proxy, "idle_timeout").await, 1.0);
    assert_eq!(hits(&proxy, "header_read_timeout").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_limits_of_new_connections() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ max_request_headers: 100 }")).await;
    let mut many = String::from("GET /many HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..12 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(exchange(proxy.addr, many.as_bytes()).await.status(), 200);
    let ev = proxy
        .rewrite(&config(&app, "{ max_request_headers: 10 }"))
        .await;
    assert_eq!(ev.rejected, 0);
    assert_eq!(exchange(proxy.addr, many.as_bytes()).await.status(), 431);
    wait_hits(&proxy, "request_headers", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_tunnel_keeps_its_place_under_the_connection_cap() {
    use futures_util::{SinkExt, StreamExt};
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{ max_connections: 1 }")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    // The tunnel is up (an echo went through): its HTTP connection is over, its slot is not.
    ws.send("ping".into()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "ping");
    let refused = exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(refused.bytes.is_empty(), "{}", refused.text());
    assert_eq!(hits(&proxy, "max_connections").await, 1.0);
    // Closing the tunnel gives the slot back.
    ws.close(None).await.unwrap();
    drop(ws);
    let mut served = false;
    for _ in 0..200 {
        let r = exchange(
            proxy.addr,
            b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "the tunnel's slot was never given back");
}
