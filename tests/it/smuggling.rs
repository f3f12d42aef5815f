//! Request smuggling and parsing, as raw bytes on a socket: every malformed or ambiguous request
//! gets a 400 (or 431) and a closed connection, and the backend receives nothing.

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

/// Each case: a name and the whole request as sent.
const REFUSED: &[(&str, &[u8])] = &[
    (
        "CL+TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "TE+CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ),
    (
        "duplicate CL, same value",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "duplicate CL, different values",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ),
    (
        "CL list",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    ),
    (
        "CL with sign",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    ),
    (
        "CL hex",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    ),
    (
        "CL overflow",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
    ),
    (
        "TE xchunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE chunked, identity",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE gzip, chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE twice",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE quoted",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE with space before colon",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE on HTTP/1.0",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "negative chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
    ),
    (
        "hex-prefixed chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "overflowing chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ),
    (
        "chunk size not hex",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
    ),
    (
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
    ),
    (
        "bare CR in a value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\rtwo\r\n\r\n",
    ),
    (
        "bare LF ending a header line",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\nX-B: two\r\n\r\n",
    ),
    (
        "bare LF line endings throughout",
        b"GET / HTTP/1.1\nHost: a\n\n",
    ),
    (
        "NUL in a value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\0two\r\n\r\n",
    ),
    (
        "space in a header name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
    ),
    (
        "control byte in a header name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x01A: b\r\n\r\n",
    ),
    (
        "empty header name",
        b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
    ),
    (
        "duplicate Host",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ),
    ("missing Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n"),
    (
        "Host with user info",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    ),
    (
        "Host with a space",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    ),
    (
        "absolute-form host differs from Host",
        b"GET http://internal.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_malformed_requests_are_refused_and_never_forwarded() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{}")).await;
    let mut failures = Vec::new();
    for (name, request) in REFUSED {
        let before = app.traffic();
        let reply = exchange(proxy.addr, request).await;
        if reply.status() != 400 {
            failures.push(format!("{name}: got {:?}", reply.text()));
        }
        if app.traffic() > before {
            failures.push(format!("{name}: reached the backend"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The proxy still serves, and counted the refusals.
    let ok = exchange(
        proxy.addr,
        b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status(), 200, "{}", ok.text());
    assert_eq!(app.traffic(), 1, "{:?}", app.seen());
    // What hyper refuses is counted when its connection ends, a moment after the client sees it.
    let series =
        "switchyard_limit_rejections_total{listener=\"public\",limit=\"malformed_request\"}";
    let m = proxy.wait_metric(series, REFUSED.len() as f64).await;
    assert_eq!(sample(&m, series), Some(REFUSED.len() as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_mid_stream_is_the_clients_fault() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{}")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    app.wait_for_path("/count").await;
    s.write_all(b"zz\r\nbroken\r\n0\r\n\r\n").await.unwrap();
    let reply = read_to_close(&mut s).await;
    assert_eq!(reply.status(), 400, "{}", reply.text());
    let m = proxy.metrics().await;
    let backend = app.addr.to_string();
    for outcome in ["reset", "5xx", "connect_failure", "timeout"] {
        let series = format!(
            "switchyard_upstream_outcomes_total{{upstream=\"app\",backend=\"{backend}\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(sample(&m, &series), Some(0.0), "{series} in {m}");
    }
    let b = proxy.backend_status("app", app.addr).await;
    assert_eq!(b["breaker"]["state"], "closed", "{b}");
    assert_eq!(b["breaker"]["consecutive_failures"], 0, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_a_backend_could_misread_never_reach_it() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{}")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /h HTTP/1.1\r\nHost: a\r\nX_User: admin\r\nX-Forwarded-For: 203.0.113.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = read_response(&mut s).await;
    assert_eq!(reply.status(), 200, "{}", reply.text());
    let seen = &app.seen()[0];
    let h = &seen.headers;
    assert!(!h.contains_key("x_user"), "underscored header forwarded");
    assert!(!h.contains_key("upgrade"), "h2c upgrade forwarded");
    assert!(!h.contains_key("http2-settings"));
    assert_eq!(h["x-forwarded-for"], "203.0.113.1, 127.0.0.1");
    let m = proxy.metrics().await;
    let dropped = sample(
        &m,
        "switchyard_limit_rejections_total{listener=\"public\",limit=\"headers_with_underscores\"}",
    );
    assert_eq!(dropped, Some(1.0));

    // With `reject`, the same header is a 400.
    let strict = Proxy::start(&config(&app, "{ headers_with_underscores: reject }")).await;
    let reply = exchange(
        strict.addr,
        b"GET /strict HTTP/1.1\r\nHost: a\r\nX_User: admin\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), 400, "{}", reply.text());
    assert_eq!(app.traffic(), 1);
}

// ----- HTTP/2 as raw frames -----

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block without compression: pseudo-headers from the static table, the rest literal.
pub(crate) fn h2_headers(post: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![if post { 0x83 } else { 0x82 }, 0x86, 0x84, 0x01, 1, b'a'];
    for (k, v) in extra {
        b.push(0x00);
        b.push(k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// A name, a header block, and the body (if any).
type H2Case = (&'static str, Vec<u8>, Option<&'static [u8]>);

#[derive(Debug, PartialEq)]
enum H2Answer {
    Status(u8),
    Reset,
    GoAway,
}

/// Sends one request on stream 1 and reads until stream 1 is answered or reset.
async fn h2_exchange(
    addr: std::net::SocketAddr,
    headers: Vec<u8>,
    data: Option<&[u8]>,
) -> H2Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let end_stream = if data.is_none() { 0x1 } else { 0 };
    out.extend(frame(1, 0x4 | end_stream, 1, &headers));
    if let Some(d) = data {
        out.extend(frame(0, 0x1, 1, d));
    }
    s.write_all(&out).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return H2Answer::GoAway;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return H2Answer::GoAway;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match (head[3], stream) {
                (1, 1) => return H2Answer::Status(payload.first().copied().unwrap_or(0)),
                (3, 1) => return H2Answer::Reset,
                (7, _) => return H2Answer::GoAway,
                (4, 0) if head[4] & 1 == 0 => {
                    s.write_all(&frame(4, 1, 0, &[])).await.unwrap();
                }
                _ => {}
            }
        }
    })
    .await
    .expect("no answer to the HTTP/2 request")
}

/// `:status: 200` from HPACK's static table (the first byte of a 200's header block).
const STATUS_200: u8 = 0x88;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_an_http1_backend_could_misread_are_refused() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{}")).await;
    let cases: Vec<H2Case> = vec![
        (
            "connection",
            h2_headers(false, &[("connection", "close")]),
            None,
        ),
        (
            "transfer-encoding",
            h2_headers(true, &[("transfer-encoding", "chunked")]),
            Some(b"0\r\n\r\n"),
        ),
        (
            "upgrade",
            h2_headers(false, &[("upgrade", "websocket")]),
            None,
        ),
        (
            "keep-alive",
            h2_headers(false, &[("keep-alive", "5")]),
            None,
        ),
        ("te: gzip", h2_headers(false, &[("te", "gzip")]), None),
        (
            "content-length above the data",
            h2_headers(true, &[("content-length", "10")]),
            Some(b"abc"),
        ),
        (
            "content-length below the data",
            h2_headers(true, &[("content-length", "1")]),
            Some(b"abc"),
        ),
        (
            "host differs from :authority",
            h2_headers(false, &[("host", "b")]),
            None,
        ),
    ];
    for (name, headers, data) in cases {
        let answer = h2_exchange(proxy.addr, headers, data).await;
        assert!(answer != H2Answer::Status(STATUS_200), "{name}: {answer:?}");
        assert_eq!(
            app.traffic(),
            0,
            "{name} reached the backend: {:?}",
            app.seen()
        );
    }
    // The same framing, well formed, goes through: the cases above failed for their fault.
    let ok = h2_exchange(
        proxy.addr,
        h2_headers(true, &[("content-length", "3")]),
        Some(b"abc"),
    )
    .await;
    assert_eq!(ok, H2Answer::Status(STATUS_200));
    assert_eq!(app.traffic(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_later_on_a_kept_alive_connection_is_refused_too() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "{}")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // A request without a body, then one with a body that looks like headers.
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status(), 200);
    s.write_all(
        b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 38\r\n\r\nContent-Length: 1\r\nContent-Length: 1\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.status(), 200);
    // Then the attack.
    s.write_all(
        b"POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = read_to_close(&mut s).await;
    assert_eq!(reply.status(), 400, "{}", reply.text());
    let paths: Vec<String> = app.seen().iter().map(|s| s.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/one", "/two"]);
}
