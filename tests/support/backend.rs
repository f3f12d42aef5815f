//! A real HTTP backend on 127.0.0.1:0 that records what it saw and can be told when to answer.
//!
//! Paths it understands:
//! - `/bytes/N`: streams N bytes (64 KiB chunks, generated on the fly)
//! - `/count`: reads the whole request body and answers with its length
//! - `/hold/KEY`: answers only after `release(KEY)`
//! - `/stream/KEY`: sends `first\n` at once, the rest (`rest\n`) after `release(KEY)`
//! - `/sleep/MS`: answers after MS milliseconds (a slow backend, for timeouts)
//! - `/status/CODE`: answers with that status
//! - `/ws`: WebSocket echo
//! - anything else: 200 with body `NAME\n`

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    seen_count: watch::Sender<usize>,
    connections: AtomicU64,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Connection tasks, so that `kill` can cut them too.
    conn_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Percent of answers that are 500s, spread evenly (`set_failing`).
    failing: std::sync::atomic::AtomicU32,
    answered: AtomicU64,
    /// What `/healthz` says (`set_healthy`).
    unhealthy: std::sync::atomic::AtomicBool,
    /// Milliseconds every answer waits first (`set_delay`).
    delay_ms: AtomicU64,
}

impl State {
    fn gate(&self, key: &str) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().unwrap();
        Arc::clone(
            gates
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(0))),
        )
    }
}

pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to bring a backend back on its old port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(addr).await.expect("bind test backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let name_owned = name.to_owned();
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st2 = Arc::clone(&st);
                let st = Arc::clone(&st);
                let name = name_owned.clone();
                let task = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(answer(&name, &st, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
                st2.conn_tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        TestBackend {
            name: name.to_owned(),
            addr,
            state,
            task,
        }
    }

    /// Dies: stops accepting (new connections are refused) and cuts every open connection,
    /// requests in progress included.
    pub fn kill(&self) {
        self.task.abort();
        for t in self.state.conn_tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Answers this percent of requests with a 500, spread evenly.
    pub fn set_failing(&self, percent: u32) {
        self.state.failing.store(percent, Ordering::SeqCst);
    }

    /// Makes every answer (health checks aside) wait this long first: a slow version.
    pub fn set_delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// What `/healthz` answers: 200 or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Requests seen, health checks left out.
    pub fn traffic(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.uri.path() != "/healthz")
            .count()
    }

    /// Health checks seen.
    pub fn health_checks(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.uri.path() == "/healthz")
            .count()
    }

    pub fn release(&self, key: &str) {
        self.state.gate(key).add_permits(1);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until a request for `path` has arrived.
    pub async fn wait_for_path(&self, path: &str) {
        let mut rx = self.state.seen_count.subscribe();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if self.seen().iter().any(|s| s.uri.path() == path) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: no request for {path} arrived", self.name));
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(name: &str, st: &State, mut req: Request<Incoming>) -> Response<BoxBody> {
    {
        let mut seen = st.seen.lock().unwrap();
        seen.push(Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        });
        st.seen_count.send_replace(seen.len());
    }
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let sick = st.unhealthy.load(Ordering::SeqCst);
        let status = if sick {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return text(status, format!("{name} health\n")).tap_name(name);
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = u64::from(st.failing.load(Ordering::SeqCst));
    if failing > 0 {
        // Exactly `failing` percent over any run: fail when the running share crosses a step.
        let n = st.answered.fetch_add(1, Ordering::SeqCst);
        if (n + 1) * failing / 100 > n * failing / 100 {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{name} failed\n"),
            )
            .tap_name(name);
        }
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (verb, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match verb {
        "bytes" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len() as u64) as usize;
                    if tx.send(Ok(Frame::data(chunk.slice(..take)))).await.is_err() {
                        return;
                    }
                    left -= take as u64;
                }
            });
            let mut resp = stream_response(rx);
            resp.headers_mut()
                .insert("content-length", HeaderValue::from(n));
            resp
        }
        "count" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "body error\n".into()),
                }
            }
            text(StatusCode::OK, format!("{n}\n"))
        }
        "hold" => {
            let _ = st.gate(arg).acquire().await.map(|p| p.forget());
            text(StatusCode::OK, format!("{name} held {arg}\n"))
        }
        "stream" => {
            let gate = st.gate(arg);
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
                    .await;
                let _ = gate.acquire().await.map(|p| p.forget());
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"rest\n"))))
                    .await;
            });
            stream_response(rx)
        }
        "sleep" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("{name} slept\n"))
        }
        "status" => {
            let code = arg.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
            text(code.unwrap_or(StatusCode::OK), format!("{name}\n"))
        }
        "ws" => websocket(&mut req),
        _ => text(StatusCode::OK, format!("{name}\n")),
    }
    .tap_name(name)
}

trait TapName {
    fn tap_name(self, name: &str) -> Self;
}

impl TapName for Response<BoxBody> {
    fn tap_name(mut self, name: &str) -> Self {
        self.headers_mut()
            .insert("x-backend", HeaderValue::from_str(name).unwrap());
        self
    }
}

fn text(status: StatusCode, body: String) -> Response<BoxBody> {
    let body = http_body_util::Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn stream_response(rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>) -> Response<BoxBody> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn websocket(req: &mut Request<Incoming>) -> Response<BoxBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket request\n".into());
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).unwrap(),
    );
    r
}
