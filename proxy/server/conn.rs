//! Serves one accepted connection (HTTP/1.1 or prior-knowledge HTTP/2) until it ends or a stop
//! asks it to finish gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::clock::{Activity, Busy, LazyTimer};
use super::shutdown::{Stop, Tracker};
use crate::http::handler::{self, ConnInfo, ProxyBody};
use crate::shared::Shared;

/// Slowloris guard: a connection must bring a whole request head within this long of opening
/// or of its previous response ending (Envoy's and NGINX's default); an idle keep-alive
/// connection is closed after it too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams per connection (Envoy's edge recommendation).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Everything a connection needs, shared by all connections of all listeners.
pub struct ServeCtx {
    pub shared: Arc<Shared>,
    pub tracker: Tracker,
    builder: auto::Builder<TokioExecutor>,
}

impl ServeCtx {
    pub fn new(shared: Arc<Shared>, tracker: Tracker) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Our own watchdog covers this (see `serve`); hyper's costs a timer per request.
            .header_read_timeout(None)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        ServeCtx {
            shared,
            tracker,
            builder,
        }
    }
}

pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    proto: &'static str,
    ctx: Arc<ServeCtx>,
    mut stop: Stop,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _live = ctx.tracker.token();
    let activity = Arc::new(Activity::default());
    let info = Arc::new(ConnInfo {
        peer,
        peer_value: crate::http::headers::peer_value(peer.ip()),
        proto,
        tracker: ctx.tracker.clone(),
        route_timer: Mutex::new(LazyTimer::default()),
    });
    let shared = Arc::clone(&ctx.shared);
    let requests = Arc::clone(&activity);
    let service = service_fn(move |req| {
        let busy = requests.start();
        let shared = Arc::clone(&shared);
        let info = Arc::clone(&info);
        async move {
            let resp = handler::handle(&shared, &info, req).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut watchdog = LazyTimer::default();
    watchdog.arm(tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
    let idle_too_long = std::future::poll_fn(|cx| {
        watchdog.poll_watch(cx, HEADER_READ_TIMEOUT, || {
            activity.idle_deadline(HEADER_READ_TIMEOUT)
        })
    });
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = idle_too_long => {
            tracing::debug!(%peer, "no request head within {HEADER_READ_TIMEOUT:?}; closing");
            Ok(())
        }
        () = stop.wait() => {
            // Finish the request in progress (HTTP/1.1) or the open streams (HTTP/2, GOAWAY),
            // then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A response body that keeps its connection marked busy until it is fully sent or dropped.
pub struct Tracked {
    body: ProxyBody,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
