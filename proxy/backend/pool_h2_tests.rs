//! The HTTP/2 side of the pool against a real HTTP/2 server on loopback: how a request waits
//! on a shared connection, and what the connection's end does.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::ConnPool;
use crate::body::ReqBody;
use crate::config::model::{Protocol, Transport};

/// A server on one connection: `/hold` answers once `gate` is notified (and says it has the
/// request through `holding`); anything else at once. Ends the connection gracefully once
/// `close` is notified.
struct Server {
    pool: Arc<ConnPool>,
    holding: Arc<Notify>,
    gate: Arc<Notify>,
    close: Arc<Notify>,
    /// Fires when the server has let the connection go.
    closed: oneshot::Receiver<()>,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (holding, gate, close) = (
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let (closed_tx, closed) = oneshot::channel();
    let (h, g, c) = (Arc::clone(&holding), Arc::clone(&gate), Arc::clone(&close));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (h, g) = (Arc::clone(&h), Arc::clone(&g));
            async move {
                if req.uri().path() == "/hold" {
                    let released = g.notified();
                    h.notify_one();
                    released.await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = c.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        let _ = closed_tx.send(());
    });
    let transport = Transport {
        connect_timeout: Duration::from_secs(10),
        // Longer than any test: the idle sweep never acts here.
        idle_timeout: Duration::from_secs(3600),
        tls: None,
        protocol: Protocol::Http2,
    };
    let addr = crate::config::validate::backend_addr(&addr.to_string()).unwrap();
    Server {
        pool: Arc::new(ConnPool::new(addr, transport, 1)),
        holding,
        gate,
        close,
        closed,
    }
}

fn request(path: &str) -> Request<ReqBody> {
    Request::get(path)
        .header("host", "backend")
        .body(ReqBody::empty())
        .unwrap()
}

/// Counts how often the future it wraps is polled: each poll is a wake-up.
struct Polls<F> {
    inner: std::pin::Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Polls<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.as_mut().poll(cx)
    }
}

/// A request waiting for its answer on a shared connection is woken by that answer and
/// nothing else: no timer looks at the connection meanwhile (it used to be polled every
/// 250 ms to find requests stranded on a closed connection: 20 wake-ups here). Five seconds
/// pass on a paused clock while the backend holds the request; the waiting request is not
/// polled once.
#[tokio::test]
async fn a_request_waiting_on_a_shared_connection_is_woken_by_its_answer_alone() {
    let s = server().await;
    // A first request opens the connection: the one below takes a stream on it.
    let warm = s.pool.send(request("/warm"), false, Instant::now()).await;
    assert_eq!(warm.ok().map(|r| r.resp.status().as_u16()), Some(200));
    let polls = Arc::new(AtomicUsize::new(0));
    let pool = Arc::clone(&s.pool);
    let waiting = tokio::spawn(Polls {
        inner: Box::pin(async move {
            pool.send(request("/hold"), false, Instant::now())
                .await
                .map(|r| r.resp.status().as_u16())
        }),
        polls: Arc::clone(&polls),
    });
    s.holding.notified().await;
    // Paused only while nothing is on the wire: the clock then moves from timer to timer (a
    // paused clock also jumps while sockets are read, which would race hyper's keep-alive).
    tokio::time::pause();
    let before = polls.load(Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        polls.load(Ordering::SeqCst),
        before,
        "woken while nothing happened"
    );
    tokio::time::resume();
    s.gate.notify_one();
    let status = waiting.await.unwrap().ok();
    assert_eq!(status, Some(200));
}

/// When a connection's task ends, the pool lets go of the connection at once (not at the next
/// request or idle sweep): its last long-lived sender goes with it, which is what hands back a
/// request queued on it in the instant it ended. The next request opens a new one.
#[tokio::test]
async fn a_connection_that_ends_leaves_the_pool_at_once() {
    let s = server().await;
    let first = s.pool.send(request("/one"), false, Instant::now()).await;
    assert_eq!(first.ok().map(|r| r.resp.status().as_u16()), Some(200));
    assert_eq!(s.pool.h2.len(), 1);
    s.close.notify_one();
    s.closed.await.unwrap();
    // The connection's task sees the end (GOAWAY, then EOF) and drops it: no request and no
    // timer is involved, so this only yields until it has.
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        while s.pool.h2.len() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(left.is_ok(), "the ended connection stayed in the pool");
}
