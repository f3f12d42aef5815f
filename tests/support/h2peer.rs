//! An HTTP/2-only backend (h2c, prior knowledge) on 127.0.0.1:0, counting its connections.
//!
//! - `/healthz`: 200, or 503 after `set_healthy(false)`
//! - `/hold`: answers once `open_gate()` was called (requests pile up as concurrent streams)
//! - anything else: 200 with body `h2 <path>\n`
//!
//! With `goaway_after(n)`, every connection is shut down gracefully (GOAWAY, in-flight
//! streams finish) once it has taken `n` requests, as servers do at a max-requests-per-connection
//! limit or when a pod is told to stop.
//!
//! A connection is closed as Go's HTTP/2 server, nginx and Envoy close one: after its last frame
//! the peer stops sending and reads (and drops) whatever the client still sends until the client
//! closes. hyper's server alone drops its socket at once; if requests the client sent after the
//! GOAWAY are unread in it then, the kernel resets the connection, and the reset can destroy the
//! final GOAWAY before it leaves (RFC 9293 3.6: unsent data is lost), leaving the client unable
//! to tell which requests were never processed. That is an abrupt close, not the graceful one
//! this peer stands for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

#[derive(Default)]
struct State {
    connections: AtomicU64,
    requests: AtomicU64,
    traffic: AtomicU64,
    unhealthy: AtomicBool,
    goaway_after: AtomicU64,
    gate_open: AtomicBool,
    gate: Notify,
    holding: watch::Sender<u64>,
    /// Connections open now.
    open: watch::Sender<u64>,
}

pub struct H2Peer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Peer {
    pub async fn start() -> H2Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                st.open.send_modify(|n| *n += 1);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    serve(Arc::clone(&st), stream).await;
                    st.open.send_modify(|n| *n -= 1);
                });
            }
        });
        H2Peer { addr, state, task }
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests answered or in progress, health checks included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests other than health checks.
    pub fn traffic(&self) -> u64 {
        self.state.traffic.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    pub fn goaway_after(&self, n: u64) {
        self.state.goaway_after.store(n, Ordering::SeqCst);
    }

    /// Waits until `n` requests are held at `/hold` at once.
    pub async fn wait_holding(&self, n: u64) {
        let mut rx = self.state.holding.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(|h| *h >= n))
            .await
            .expect("requests never piled up at the backend")
            .unwrap();
    }

    /// Waits until exactly `n` connections are open (a connection counts as closed once the
    /// client ended it).
    pub async fn wait_open(&self, n: u64) {
        let mut rx = self.state.open.subscribe();
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(|o| *o == n))
                .await
                .is_ok();
        assert!(waited, "{} connections open, not {n}", *rx.borrow());
    }

    pub fn open_gate(&self) {
        self.state.gate_open.store(true, Ordering::SeqCst);
        self.state.gate.notify_waiters();
    }
}

impl Drop for H2Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(st: Arc<State>, stream: TcpStream) {
    let served = Arc::new(AtomicU64::new(0));
    let limit_hit = Arc::new(Notify::new());
    let service = {
        let (st, served, limit_hit) =
            (Arc::clone(&st), Arc::clone(&served), Arc::clone(&limit_hit));
        service_fn(move |req| {
            let (st, served, limit_hit) =
                (Arc::clone(&st), Arc::clone(&served), Arc::clone(&limit_hit));
            async move {
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                let limit = st.goaway_after.load(Ordering::SeqCst);
                if limit > 0 && n == limit {
                    limit_hit.notify_one();
                }
                Ok::<_, Infallible>(answer(&st, req).await)
            }
        })
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(Lingering(Some(stream))), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = limit_hit.notified() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn answer(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let version = req.version();
    let _ = req.into_body().collect().await;
    assert_eq!(version, http::Version::HTTP_2);
    if path != "/healthz" {
        st.traffic.fetch_add(1, Ordering::SeqCst);
    }
    if path == "/healthz" {
        let status = if st.unhealthy.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(Full::default());
        *r.status_mut() = status;
        return r;
    }
    if path == "/hold" {
        let notified = st.gate.notified();
        st.holding.send_modify(|h| *h += 1);
        if !st.gate_open.load(Ordering::SeqCst) {
            notified.await;
        }
    }
    Response::new(Full::new(Bytes::from(format!("h2 {path}\n"))))
}

/// A socket that, when hyper is done with it, stops sending and reads until the client closes
/// (at most 10 s) before it is closed: a lingering close.
struct Lingering(Option<TcpStream>);

impl Lingering {
    fn io(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.0.as_mut().expect("open until dropped"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.0.take() else {
            return;
        };
        tokio::spawn(async move {
            let _ = stream.shutdown().await;
            let mut buf = [0u8; 4096];
            let drain = async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}
