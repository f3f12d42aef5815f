//! An HTTP/2-only backend (h2c, prior knowledge) on 127.0.0.1:0, counting its connections.
//!
//! - `/healthz`: 200, or 503 after `set_healthy(false)`
//! - `/hold`: answers once `open_gate()` was called (requests pile up as concurrent streams)
//! - anything else: 200 with body `h2 <path>\n`
//!
//! With `goaway_after(n)`, every connection is shut down gracefully (GOAWAY, in-flight
//! streams finish) once it has taken `n` requests, as servers do at a max-requests-per-connection
//! limit or when a pod is told to stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
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
                tokio::spawn(serve(Arc::clone(&st), stream));
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

async fn serve(st: Arc<State>, stream: tokio::net::TcpStream) {
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
        .serve_connection(TokioIo::new(stream), service);
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
