//! An etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/*`, `/v3/watch` as a streamed response), with the hyper client already in the
//! tree. The `etcd-client` crate speaks gRPC and needs `protoc` at build time, which would break
//! a fresh machine's `cargo run`; the gateway is what APISIX uses too. Debian's etcd (3.4)
//! serves `/v3/` (and the older `/v3beta/`); `/v3/` is the path 3.4 and later share.
//!
//! - [`Etcd`]: endpoints tried in turn, a few idle keep-alive connections, TLS (rustls) and
//!   username + password (a token, renewed when etcd says it expired).
//! - [`api`]: the typed calls and their JSON (keys and values are base64, 64-bit numbers are
//!   strings); [`watch`]: a watch's streamed answers.

pub(crate) mod api;
pub(crate) mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::config::cluster::{Endpoint, Etcd as EtcdConfig, EtcdAuth};
use crate::config::model::UpstreamTls;

/// The gateway's path prefix (etcd 3.4 and later).
const PREFIX: &str = "/v3";
/// Answers larger than this are refused (a range of every node of a big fleet stays far below).
const MAX_ANSWER: usize = 16 << 20;
/// Idle connections kept for unary calls.
const MAX_IDLE: usize = 4;

type Sender = SendRequest<Full<Bytes>>;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EtcdError {
    /// Nothing reached etcd, or no answer came: connect, TLS, timeout, reset.
    #[error("cannot reach etcd at {endpoint}: {error}")]
    Unreachable { endpoint: String, error: String },
    /// etcd answered with an error (its message, e.g. `etcdserver: ...`).
    #[error("etcd at {endpoint} refused {call}: {message}")]
    Refused {
        endpoint: String,
        call: &'static str,
        message: String,
    },
    #[error("etcd's answer to {call} could not be read: {why}")]
    Decode { call: &'static str, why: String },
}

impl EtcdError {
    /// etcd answered (it is up), even if it said no.
    pub(crate) fn answered(&self) -> bool {
        !matches!(self, EtcdError::Unreachable { .. })
    }
}

/// Calls made, by kind and result: `switchyard_fleet_etcd_requests_total`.
#[derive(Debug, Default)]
pub(crate) struct CallCounts {
    counts: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    pub(crate) writes: AtomicU64,
}

impl CallCounts {
    fn note(&self, call: &'static str, result: &Result<Value, EtcdError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(EtcdError::Unreachable { .. }) => "unreachable",
            Err(_) => "error",
        };
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((call, outcome)).or_default() += 1;
        }
        if matches!(call, "put" | "txn" | "delete") && result.is_ok() {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.counts
            .lock()
            .map(|c| c.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Conns {
    /// Index of the endpoint in use; moves on when one cannot be reached.
    current: usize,
    idle: Vec<Sender>,
    token: Option<String>,
}

pub(crate) struct Etcd {
    endpoints: Vec<Endpoint>,
    tls: Option<UpstreamTls>,
    auth: Option<EtcdAuth>,
    /// Bound of one call (connect, send, whole answer).
    timeout: Duration,
    conns: Mutex<Conns>,
    pub(crate) calls: Arc<CallCounts>,
}

impl Etcd {
    pub(crate) fn new(config: &EtcdConfig, timeout: Duration) -> Etcd {
        Etcd {
            endpoints: config.endpoints.clone(),
            tls: config.tls.clone(),
            auth: config.auth.clone(),
            timeout,
            conns: Mutex::default(),
            calls: Arc::default(),
        }
    }

    pub(crate) fn endpoints(&self) -> String {
        self.endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn current(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.current)
    }

    /// Gives up on endpoint `i`: the next call starts with the next one.
    fn move_on(&self, i: usize) {
        if let Ok(mut c) = self.conns.lock()
            && c.current == i
        {
            c.current = (i + 1) % self.endpoints.len().max(1);
            c.idle.clear();
        }
    }

    /// A fresh connection to endpoint `i` (TCP, then TLS for https://).
    async fn connect(&self, i: usize) -> Result<Sender, String> {
        let ep = &self.endpoints[i];
        let tcp = TcpStream::connect(ep.authority.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, ep.tls) {
            (Some(tls), true) => {
                let addr = crate::config::model::BackendAddr {
                    authority: ep.authority.clone(),
                };
                let stream = crate::backend::tls::connect(tls, &addr, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                handshake(stream).await
            }
            _ => handshake(tcp).await,
        }
    }

    async fn sender(&self, i: usize) -> Result<Sender, String> {
        let idle = self.conns.lock().ok().and_then(|mut c| {
            while let Some(s) = c.idle.pop() {
                if !s.is_closed() {
                    return Some(s);
                }
            }
            None
        });
        match idle {
            Some(s) => Ok(s),
            None => self.connect(i).await,
        }
    }

    fn checkin(&self, sender: Sender, i: usize) {
        if let Ok(mut c) = self.conns.lock()
            && c.current == i
            && c.idle.len() < MAX_IDLE
            && !sender.is_closed()
        {
            c.idle.push(sender);
        }
    }

    /// One POST to `PREFIX + path` on endpoint `i`; the answer's status and JSON.
    async fn post(
        &self,
        i: usize,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(StatusCode, Value), String> {
        let mut sender = self.sender(i).await?;
        sender.ready().await.map_err(|e| chain(&e))?;
        let req = request(&self.endpoints[i], path, body, token)?;
        let resp = sender.send_request(req).await.map_err(|e| chain(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| chain(&*e))?
            .to_bytes();
        self.checkin(sender, i);
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A unary call: `body` to `path`, the JSON answer. Tries each endpoint once, starting with
    /// the one in use; logs in first when a username is set, and again when the token expired.
    pub(crate) async fn call(
        &self,
        call: &'static str,
        path: &str,
        body: Value,
    ) -> Result<Value, EtcdError> {
        let result = self.call_inner(call, path, &body).await;
        self.calls.note(call, &result);
        result
    }

    async fn call_inner(
        &self,
        call: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<Value, EtcdError> {
        let n = self.endpoints.len().max(1);
        let first = self.current();
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let endpoint = self.endpoints[i].to_string();
            let attempt = tokio::time::timeout(self.timeout, async {
                let mut renewed = false;
                loop {
                    let token = self.token(i).await?;
                    let (status, value) = self.post(i, path, body, token.as_deref()).await?;
                    if status.is_success() {
                        return Ok(Ok(value));
                    }
                    let message = message(&value, status);
                    if token.is_some() && !renewed && message.contains("auth token") {
                        // Simple tokens expire (5 minutes by default): log in again, once.
                        if let Ok(mut c) = self.conns.lock() {
                            c.token = None;
                        }
                        renewed = true;
                        continue;
                    }
                    return Ok(Err(message));
                }
            })
            .await;
            match attempt {
                Ok(Ok(Ok(value))) => return Ok(value),
                Ok(Ok(Err(message))) => {
                    return Err(EtcdError::Refused {
                        endpoint,
                        call,
                        message,
                    });
                }
                Ok(Err(AuthOr::Refused(message))) => {
                    return Err(EtcdError::Refused {
                        endpoint,
                        call: "authenticate",
                        message,
                    });
                }
                Ok(Err(AuthOr::Io(error))) => {
                    self.move_on(i);
                    last = Some(EtcdError::Unreachable { endpoint, error });
                }
                Err(_) => {
                    self.move_on(i);
                    last = Some(EtcdError::Unreachable {
                        endpoint,
                        error: format!("no answer within {:?}", self.timeout),
                    });
                }
            }
        }
        Err(last.unwrap_or(EtcdError::Unreachable {
            endpoint: String::new(),
            error: "no endpoints".into(),
        }))
    }

    /// The auth token for endpoint `i`, logging in when there is none yet.
    async fn token(&self, i: usize) -> Result<Option<String>, AuthOr> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        if let Some(t) = self.conns.lock().ok().and_then(|c| c.token.clone()) {
            return Ok(Some(t));
        }
        let body = json!({ "name": auth.username, "password": auth.password() });
        let (status, value) = self.post(i, "/auth/authenticate", &body, None).await?;
        let token = value["token"].as_str().filter(|t| !t.is_empty());
        match token {
            Some(t) if status.is_success() => {
                if let Ok(mut c) = self.conns.lock() {
                    c.token = Some(t.to_owned());
                }
                Ok(Some(t.to_owned()))
            }
            _ => Err(AuthOr::Refused(message(&value, status))),
        }
    }

    /// Opens a watch on a connection of its own: its answers stream until it is dropped.
    pub(crate) async fn watch_stream(&self, body: Value) -> Result<Incoming, EtcdError> {
        let i = self.current();
        let endpoint = self.endpoints[i].to_string();
        let opened = tokio::time::timeout(self.timeout, async {
            let token = self.token(i).await?;
            let mut sender = self.connect(i).await?;
            sender.ready().await.map_err(|e| chain(&e))?;
            let req = request(&self.endpoints[i], "/watch", &body, token.as_deref())?;
            let resp = sender.send_request(req).await.map_err(|e| chain(&e))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                return Err(AuthOr::Refused(message(&value, status)));
            }
            Ok(resp.into_body())
        })
        .await;
        let result = match opened {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(AuthOr::Refused(message))) => Err(EtcdError::Refused {
                endpoint,
                call: "watch",
                message,
            }),
            Ok(Err(AuthOr::Io(error))) => {
                self.move_on(i);
                Err(EtcdError::Unreachable { endpoint, error })
            }
            Err(_) => {
                self.move_on(i);
                Err(EtcdError::Unreachable {
                    endpoint,
                    error: format!("no answer within {:?}", self.timeout),
                })
            }
        };
        self.calls.note(
            "watch",
            &result.as_ref().map(|_| Value::Null).map_err(Clone::clone),
        );
        result
    }
}

/// An I/O failure (try the next endpoint) or etcd's refusal (do not).
enum AuthOr {
    Io(String),
    Refused(String),
}

impl From<String> for AuthOr {
    fn from(e: String) -> Self {
        AuthOr::Io(e)
    }
}

async fn handshake<S>(stream: S) -> Result<Sender, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| chain(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(
    ep: &Endpoint,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> Result<Request<Full<Bytes>>, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut req = Request::post(format!("{PREFIX}{path}"))
        .header(header::HOST, ep.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, t);
    }
    req.body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

/// An error and its causes, `a: b: c` (hyper's own message alone says "connection error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// etcd's error message from a gateway answer (`{"error": ..., "message": ..., "code": N}`).
fn message(value: &Value, status: StatusCode) -> String {
    value["message"]
        .as_str()
        .or_else(|| value["error"].as_str())
        .map_or_else(|| format!("HTTP {status}"), str::to_owned)
}

#[cfg(test)]
mod tests;
