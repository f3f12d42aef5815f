//! Active health checks: an HTTP GET of the upstream's `path` on every backend, every
//! `interval`, on a fresh connection. `unhealthy_threshold` failures in a row take a backend out
//! of the picker, `healthy_threshold` passes in a row bring it back (HAProxy's rise and fall).
//!
//! One task per checked backend, owned by [`HealthCheckers`], which the reloader reconciles
//! against every new config: checks start for new backends and stop for removed ones.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use super::registry::{Backend, BackendKey};
use super::state::BackendState;
use crate::config::Config;
use crate::config::model::{BackendAddr, HealthCheck, Protocol, Transport};

/// Rise and fall: the pure part of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    healthy: bool,
    streak: u32,
    /// Never checked yet (a discovered pod that just appeared): one pass brings it in.
    pending: bool,
}

impl Tracker {
    pub fn new(healthy: bool) -> Self {
        Tracker {
            healthy,
            streak: 0,
            pending: false,
        }
    }

    /// A backend that takes traffic after its first passing check, not after a whole rise.
    pub fn pending() -> Self {
        Tracker {
            healthy: false,
            streak: 0,
            pending: true,
        }
    }

    /// Feeds one check result; returns the new state when it changes.
    pub fn observe(&mut self, passed: bool, check: &HealthCheck) -> Option<bool> {
        if self.pending && passed {
            *self = Tracker::new(true);
            return Some(true);
        }
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if passed {
            check.healthy_threshold
        } else {
            check.unhealthy_threshold
        };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

/// One check: a 2xx or 3xx within the timeout passes. Spoken in the upstream's protocol
/// (HTTP/2 backends may not speak HTTP/1.1 at all).
pub(crate) async fn probe(
    state: &BackendState,
    check: &HealthCheck,
    transport: &Transport,
) -> Result<u16, String> {
    let attempt = async {
        let addr = state.addr.as_str();
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let req = request(check, addr)?;
        match &transport.tls {
            None => {
                let h2 = transport.protocol == Protocol::Http2;
                ask(stream, h2, req, &state.addr, false).await
            }
            Some(tls) => {
                let client = super::tls::with_alpn(&tls.client, transport.protocol);
                let stream = super::tls::connect_with(&client, tls, &state.addr, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                ask(stream, h2, req, &state.addr, true).await
            }
        }
    };
    let (status, verdict) = tokio::time::timeout(check.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", check.timeout))??;
    verdict?;
    if (200..400).contains(&status) {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}

/// The check's request: a GET of its path, or a gRPC `Health/Check` call.
fn request(check: &HealthCheck, addr: &str) -> Result<Request<Full<Bytes>>, String> {
    let req = Request::builder()
        .uri(check.path.as_str())
        .header(http::header::HOST, addr)
        .header(http::header::USER_AGENT, "switchyard-health-check");
    let req = match &check.grpc_service {
        None => req.method(http::Method::GET).body(Full::default()),
        Some(service) => req
            .method(http::Method::POST)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Full::new(grpc_check_request(service))),
    };
    req.map_err(|e| e.to_string())
}

/// A `grpc.health.v1.HealthCheckRequest { service }` in its gRPC frame (uncompressed, length
/// prefixed): field 1, a string.
fn grpc_check_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a);
        varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Whether a `Health/Check` answer says SERVING: `grpc-status` 0 and a
/// `HealthCheckResponse { status = 1 }` (field 1, a varint; 1 is SERVING).
fn grpc_serving(
    head: &http::HeaderMap,
    body: &[u8],
    trailers: Option<&http::HeaderMap>,
) -> Result<(), String> {
    let status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.get("grpc-status"))
        .map(|v| v.as_bytes().to_vec());
    match status.as_deref() {
        Some(b"0") => {}
        Some(s) => {
            return Err(format!("grpc-status {}", String::from_utf8_lossy(s)));
        }
        None => return Err("no grpc-status".to_owned()),
    }
    // A message whose field 1 is 1; an empty message means UNKNOWN (0).
    let msg = body.get(5..).unwrap_or_default();
    let mut i = 0;
    while i + 1 < msg.len() {
        let (tag, value) = (msg[i], msg[i + 1]);
        if tag == 0x08 {
            return if value == 1 {
                Ok(())
            } else {
                Err(format!("health status {value} (1 is SERVING)"))
            };
        }
        // Only field 1 is expected; anything else is not a SERVING answer.
        i += 2;
    }
    Err("health status UNKNOWN (1 is SERVING)".to_owned())
}

/// Sends the check's request over a connected stream, in HTTP/2 when `h2`: the status, and
/// for a gRPC check whether it said SERVING.
async fn ask<S>(
    stream: S,
    h2: bool,
    mut req: Request<Full<Bytes>>,
    addr: &BackendAddr,
    tls: bool,
) -> Result<(u16, Result<(), String>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let grpc = req.headers().contains_key(http::header::CONTENT_TYPE);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let scheme = if tls {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        super::h2req::to_h2(&mut req, scheme, addr);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    };
    let resp = resp.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    if !grpc {
        return Ok((status, Ok(())));
    }
    let (head, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    Ok((
        status,
        grpc_serving(&head.headers, &bytes, trailers.as_ref()),
    ))
}

async fn run(state: Arc<BackendState>, check: HealthCheck, transport: Transport) {
    let mut tracker = if state.is_pending() {
        Tracker::pending()
    } else {
        Tracker::new(state.is_healthy())
    };
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = probe(&state, &check, &transport).await;
        if let Err(why) = &result {
            tracing::debug!(upstream = %state.upstream, backend = state.addr.as_str(), %why, "health check failed");
        }
        if let Some(healthy) = tracker.observe(result.is_ok(), &check) {
            state.set_healthy(healthy);
            let (upstream, backend) = (&*state.upstream, state.addr.as_str());
            if healthy {
                tracing::info!(upstream, backend, "backend healthy again: back in rotation");
            } else {
                let why = result.err().unwrap_or_default();
                tracing::warn!(upstream, backend, %why, "backend unhealthy: out of rotation");
            }
        }
    }
}

/// The running checks, one per checked backend.
#[derive(Default)]
pub struct HealthCheckers {
    running: HashMap<BackendKey, (HealthCheck, Transport, JoinHandle<()>)>,
}

impl HealthCheckers {
    /// Starts, restarts and stops checks to match `config`. Must run inside a tokio runtime.
    pub fn reconcile(&mut self, config: &Config, pools: &HashMap<Arc<str>, Vec<Backend>>) {
        let mut next = HashMap::new();
        for up in &config.upstreams {
            let Some(check) = &up.health_check else {
                continue;
            };
            for backend in pools.get(&up.name).into_iter().flatten() {
                let key = BackendKey {
                    upstream: Arc::clone(&up.name),
                    addr: backend.state.addr.clone(),
                };
                let transport = &up.transport;
                let entry = match self.running.remove(&key) {
                    Some((old, old_transport, task))
                        if old == *check && old_transport == *transport =>
                    {
                        (old, old_transport, task)
                    }
                    previous => {
                        if let Some((_, _, task)) = previous {
                            task.abort();
                        }
                        let state = Arc::clone(&backend.state);
                        let task = tokio::spawn(run(state, check.clone(), transport.clone()));
                        (check.clone(), transport.clone(), task)
                    }
                };
                next.insert(key, entry);
            }
        }
        // Whatever is left is no longer checked: stop it, and do not leave it marked down.
        for (key, (_, _, task)) in self.running.drain() {
            task.abort();
            if let Some(b) = pools
                .get(&key.upstream)
                .and_then(|bs| bs.iter().find(|b| b.state.addr == key.addr))
            {
                b.state.set_healthy(true);
            }
        }
        self.running = next;
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        for (_, (_, _, task)) in self.running.drain() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check() -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            grpc_service: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[test]
    fn it_takes_a_streak_to_fall_and_another_to_rise() {
        let c = check();
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(false, &c), None);
        assert_eq!(t.observe(false, &c), None);
        assert_eq!(t.observe(true, &c), None, "a pass breaks the streak");
        assert_eq!(t.observe(false, &c), None);
        assert_eq!(t.observe(false, &c), None);
        assert_eq!(t.observe(false, &c), Some(false));
        assert_eq!(t.observe(true, &c), None);
        assert_eq!(t.observe(true, &c), Some(true));
    }

    #[test]
    fn grpc_health_messages_are_framed_and_read() {
        assert_eq!(&grpc_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", "0".parse().unwrap());
        let serving = [0, 0, 0, 0, 2, 0x08, 1];
        let not_serving = [0, 0, 0, 0, 2, 0x08, 2];
        let empty = http::HeaderMap::new();
        assert_eq!(grpc_serving(&empty, &serving, Some(&ok)), Ok(()));
        assert!(grpc_serving(&empty, &not_serving, Some(&ok)).is_err());
        assert!(
            grpc_serving(&empty, &[0, 0, 0, 0, 0], Some(&ok)).is_err(),
            "UNKNOWN"
        );
        let mut missing = http::HeaderMap::new();
        missing.insert("grpc-status", "5".parse().unwrap());
        assert!(
            grpc_serving(&missing, &[], None).is_err(),
            "trailers-only NOT_FOUND"
        );
    }

    #[test]
    fn a_new_pod_comes_in_on_its_first_pass() {
        let c = check();
        let mut t = Tracker::pending();
        assert_eq!(t.observe(false, &c), None, "still out");
        assert_eq!(t.observe(true, &c), Some(true), "one pass, not two");
        assert_eq!(t.observe(false, &c), None, "then the usual fall");
        assert_eq!(t.observe(false, &c), None);
        assert_eq!(t.observe(false, &c), Some(false));
    }
}
