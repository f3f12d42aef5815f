//! Serves one accepted connection (HTTP/1.1 or prior-knowledge HTTP/2) until it ends or a stop
//! asks it to finish gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::clock::{Activity, Busy, LazyTimer};
use super::limits::{self, Limit, ListenerLimits, OpenSlot};
use super::shutdown::{Stop, Tracker};
use super::sniff::{HeadWatch, Sniffed};
use crate::http::handler::{self, ConnInfo, ProxyBody};
use crate::shared::Shared;

/// Everything a connection needs, shared by all connections of all listeners.
pub struct ServeCtx {
    pub shared: Arc<Shared>,
    pub tracker: Tracker,
}

impl ServeCtx {
    pub fn new(shared: Arc<Shared>, tracker: Tracker) -> Self {
        ServeCtx { shared, tracker }
    }
}

pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    proto: &'static str,
    ctx: Arc<ServeCtx>,
    listener: Arc<ListenerLimits>,
    slot: OpenSlot,
    mut stop: Stop,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _live = ctx.tracker.token();
    let activity = Arc::new(Activity::default());
    let heads = Arc::new(HeadWatch::default());
    let stream = Sniffed::new(stream, Arc::clone(&heads));
    let info = Arc::new(ConnInfo {
        peer,
        peer_value: crate::http::headers::peer_value(peer.ip()),
        proto,
        tracker: ctx.tracker.clone(),
        route_timer: Mutex::new(LazyTimer::default()),
        limits: Arc::clone(&listener),
        slot: Arc::new(slot),
        heads,
    });
    // Whether the client speaks HTTP/2: its connection then idles between streams legitimately
    // and only `idle_timeout` applies; HTTP/1.1 must bring its next request head in time.
    let h2 = Arc::new(AtomicBool::new(false));
    let saw_h2 = Arc::clone(&h2);
    let shared = Arc::clone(&ctx.shared);
    let requests = Arc::clone(&activity);
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let busy = requests.start();
        if req.version() == http::Version::HTTP_2 {
            saw_h2.store(true, Ordering::Relaxed);
        }
        let shared = Arc::clone(&shared);
        let info = Arc::clone(&info);
        async move {
            let resp = handler::handle(&shared, &info, req).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let conn = listener
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let spec = &listener.spec;
    let head_limit = spec.header_read_timeout.min(spec.idle_timeout);
    let idle_limit = || {
        if h2.load(Ordering::Relaxed) {
            spec.idle_timeout
        } else {
            head_limit
        }
    };
    let mut watchdog = LazyTimer::default();
    watchdog.arm(tokio::time::Instant::now() + head_limit);
    let idle_too_long = std::future::poll_fn(|cx| {
        let limit = idle_limit();
        watchdog.poll_watch(cx, limit, || activity.idle_deadline(limit))
    });
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = idle_too_long => {
            let (limit, which) = if h2.load(Ordering::Relaxed) {
                (spec.idle_timeout, Limit::IdleTimeout)
            } else {
                (head_limit, Limit::HeaderReadTimeout)
            };
            listener.counters.hit(which);
            tracing::debug!(%peer, "no request head within {limit:?}; closing");
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
        if let Some(limit) = limits::limit_of_conn_error(e.as_ref()) {
            listener.counters.hit(limit);
        }
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
