//! Shadow traffic on real sockets: what the client gets is untouched, the copies are bounded,
//! and differences between primary and shadow answers are counted and shown.

mod backends;
mod compare;
mod isolation;
mod limits;

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

use backends::{BlackHole, Scripted};

/// One upstream `app` for the primary, one `next` for the shadow, route `r` shadowing to it.
pub(super) fn config(
    primary: SocketAddr,
    shadow: SocketAddr,
    shadow_block: &str,
    extra: &str,
) -> String {
    format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{primary}\"] }}\n  next: {{ backends: [\"{shadow}\"] }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: next, {shadow_block} }}\n{extra}"
    )
}

pub(super) async fn shadow_view(proxy: &Proxy) -> Value {
    let r = get(&client(), &proxy.admin_url("/shadow/r")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Polls `GET /shadow/r` until `cond` holds (bounded: 20 s).
pub(super) async fn wait_shadow(proxy: &Proxy, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2000 {
        let v = shadow_view(proxy).await;
        if cond(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("shadow never {what}: {}", shadow_view(proxy).await);
}

pub(super) fn n(v: &Value, key: &str) -> u64 {
    v["requests"][key].as_u64().unwrap()
}

/// Every request chosen for shadowing that reached an end, whatever it was.
pub(super) fn settled(v: &Value) -> u64 {
    v["requests"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum()
}

pub(super) async fn post(url: &str, body: Vec<u8>) -> client::Resp {
    send(
        &client(),
        Request::post(url)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

/// Sends a chunked POST over a raw connection (its length unknown up front); returns the
/// response text.
pub(super) async fn chunked_post(addr: SocketAddr, path: &str, chunks: &[Vec<u8>]) -> String {
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
