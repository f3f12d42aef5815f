//! gRPC peers for tests: real grpcio servers (tests/support/grpc_peer.py) started on loopback
//! and stopped by PID, a grpcio client, and a small gRPC client over hyper that shows what
//! arrived (HTTP status, messages, trailers).

use std::net::SocketAddr;
use std::process::Stdio;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::client::TestClient;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_peer.py");

/// A grpcio server; killed when dropped.
pub struct GrpcPeer {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl GrpcPeer {
    pub async fn start(name: &str) -> GrpcPeer {
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg(name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with grpcio (scripts/test.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("the gRPC peer did not start within 60 s")
            .unwrap()
            .expect("the gRPC peer exited: is grpcio installed?");
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the gRPC peer: {line}"));
        GrpcPeer {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }

    /// Sends a `Control` call straight to the peer (`fail:14`, `health:NOT_SERVING`).
    pub async fn control(&self, what: &str) {
        let c = super::client::h2c_client();
        let r = call(
            &c,
            &format!("http://{}", self.addr),
            "/test.Echo/Control",
            what.as_bytes(),
            &[],
        )
        .await;
        assert_eq!(r.grpc_status, Some(0), "control {what}: {r:?}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// What a gRPC call brought back.
#[derive(Debug)]
pub struct GrpcReply {
    pub http_status: u16,
    pub headers: HeaderMap,
    /// Messages, unframed.
    pub messages: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// From the trailers, or from the head of a trailers-only answer.
    pub grpc_status: Option<u8>,
    pub grpc_message: Option<String>,
}

impl GrpcReply {
    pub fn text(&self) -> String {
        self.messages
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One call: `payload` as the only request message, over `client` (HTTP/2) to `base`.
pub async fn call(
    client: &TestClient,
    base: &str,
    method: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> GrpcReply {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    let mut req = Request::post(format!("{base}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(framed))).unwrap())
        .await
        .expect("gRPC call failed at the HTTP level");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("gRPC response body");
    let trailers = collected.trailers().cloned();
    let mut bytes = collected.to_bytes();
    let mut messages = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        bytes.advance(5);
        messages.push(bytes.split_to(len.min(bytes.len())));
    }
    let source = trailers.as_ref().unwrap_or(&parts.headers);
    let grpc_status = source
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let grpc_message = source
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    GrpcReply {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        messages,
        trailers,
        grpc_status,
        grpc_message,
    }
}

/// One unary call made by grpcio's own client, with a deadline of `timeout_s` seconds: its
/// status name and reply (or details), as `OK ...` or `UNAVAILABLE ...`.
pub async fn python_call(addr: SocketAddr, method: &str, payload: &str, timeout_s: f64) -> String {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args([
            "--call",
            &addr.to_string(),
            method,
            payload,
            &timeout_s.to_string(),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the grpcio client did not finish within 60 s")
        .expect("python3 with grpcio");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
