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
use http_body_util::Empty;
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
        let req = Request::get(check.path.as_str())
            .header(http::header::HOST, addr)
            .header(http::header::USER_AGENT, "switchyard-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        match &transport.tls {
            None => {
                let h2 = transport.protocol == Protocol::Http2;
                ask(stream, h2, req, &state.addr, false).await
            }
            Some(tls) => {
                let client = super::tls::with_alpn(&tls.client, transport.protocol);
                let stream = super::tls::connect(&client, tls, &state.addr, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                ask(stream, h2, req, &state.addr, true).await
            }
        }
    };
    let status = tokio::time::timeout(check.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", check.timeout))??;
    if (200..400).contains(&status) {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}

/// Sends the check's request over a connected stream, in HTTP/2 when `h2`.
async fn ask<S>(
    stream: S,
    h2: bool,
    mut req: Request<Empty<Bytes>>,
    addr: &BackendAddr,
    tls: bool,
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
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
    resp.map(|r| r.status().as_u16())
        .map_err(|e| format!("request: {e}"))
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
