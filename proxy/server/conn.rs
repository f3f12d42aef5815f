//! Serves one accepted connection (HTTP/1.1 or prior-knowledge HTTP/2) until it ends or a stop
//! asks it to finish gracefully. Its requests go to a [`Handler`] (the proxy, wired in by
//! `app`): this module knows connections, not what is done with their requests.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::clock::{Activity, Busy, LazyTimer};
use super::limits::{self, Limit, ListenerLimits, OpenSlot};
use super::proto::PARK_AFTER;
use super::shutdown::{Stop, Tracker};
use super::sniff::{HeadWatch, Sniffed};
use crate::shared::Shared;

/// What a connection's requests are handed to.
pub(crate) trait Handler: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static;

    fn call(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// What the handler knows about the connection a request came on.
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` shows it.
    pub(crate) peer_value: HeaderValue,
    /// `X-Forwarded-Proto` for requests on this connection.
    pub(crate) proto: &'static str,
    /// Upgraded tunnels register here so a drain waits for them.
    pub(crate) tracker: Tracker,
    /// Times the waits of HTTP/1.1 requests, one request at a time on this connection.
    route_timer: Mutex<LazyTimer>,
    /// The listener's limits and their counters.
    pub(crate) limits: Arc<ListenerLimits>,
    /// This connection's place under the listener's `max_connections`; an upgraded tunnel
    /// holds it until the tunnel closes.
    pub(crate) slot: Arc<OpenSlot>,
    /// Which HTTP/1 request head had framing hyper repaired quietly (CL+TE, CL twice).
    pub(crate) heads: Arc<HeadWatch>,
}

impl ConnInfo {
    /// The timer for a request of `version` on this connection.
    pub(crate) fn timer(&self, version: Version) -> Timer<'_> {
        if version == Version::HTTP_2 {
            Timer::Own
        } else {
            Timer::Shared(&self.route_timer)
        }
    }
}

/// Bounds a request's waits (its body, its backend). HTTP/1.1 requests come one at a time per
/// connection and share the connection's lazily re-armed timer (no timer registration per
/// request); HTTP/2 streams run side by side, so each gets a timer of its own.
#[derive(Clone, Copy)]
pub(crate) enum Timer<'a> {
    Shared(&'a Mutex<LazyTimer>),
    Own,
}

impl Timer<'_> {
    /// Runs `fut` until `deadline`; `None` if time ran out first. The caller pins `fut` where
    /// it lives: it is often large, and a copy of it here would be copied again on every try.
    pub(crate) async fn until<F: Future>(
        self,
        deadline: Instant,
        mut fut: Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut own = std::pin::pin!(None::<tokio::time::Sleep>);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match self {
                Timer::Shared(lazy) => {
                    // Poisoning cannot leave the timer inconsistent: use it anyway.
                    let mut timer = lazy.lock().unwrap_or_else(|p| p.into_inner());
                    timer.poll_deadline(deadline, cx).map(|()| None)
                }
                Timer::Own => {
                    if own.is_none() {
                        own.set(Some(tokio::time::sleep_until(deadline)));
                    }
                    match own.as_mut().as_pin_mut() {
                        Some(sleep) => sleep.poll(cx).map(|()| None),
                        None => Poll::Pending,
                    }
                }
            }
        })
        .await
    }
}

/// A peer address as it goes into `X-Forwarded-For` (IPv4-mapped IPv6 shown as IPv4); made
/// once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Everything a connection needs, shared by all connections of all listeners.
pub struct ServeCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tracker: Tracker,
    handler: Arc<dyn ServeConn>,
}

impl ServeCtx {
    pub(crate) fn new<H: Handler>(shared: Arc<Shared>, tracker: Tracker, handler: Arc<H>) -> Self {
        ServeCtx {
            shared,
            tracker,
            handler: Arc::new(Serving(handler)),
        }
    }
}

/// A connection as the listener hands it over.
pub(crate) struct Accepted {
    peer: SocketAddr,
    proto: &'static str,
    ctx: Arc<ServeCtx>,
    listener: Arc<ListenerLimits>,
    slot: OpenSlot,
    stop: Stop,
}

pub(crate) type Serve = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The handler behind a pointer the listeners need not know the type of: one dynamic call
/// per connection, none per request.
trait ServeConn: Send + Sync {
    fn plain(&self, stream: TcpStream, a: Accepted) -> Serve;
    fn tls(&self, stream: tokio_rustls::server::TlsStream<TcpStream>, a: Accepted) -> Serve;
}

struct Serving<H>(Arc<H>);

impl<H: Handler> ServeConn for Serving<H> {
    fn plain(&self, stream: TcpStream, a: Accepted) -> Serve {
        Box::pin(run(Arc::clone(&self.0), stream, a))
    }

    fn tls(&self, stream: tokio_rustls::server::TlsStream<TcpStream>, a: Accepted) -> Serve {
        Box::pin(run(Arc::clone(&self.0), stream, a))
    }
}

/// The streams a listener accepts: plain TCP, or TLS over it.
pub(crate) trait Stream: Sized {
    fn serve(self, a: Accepted) -> Serve;
}

impl Stream for TcpStream {
    fn serve(self, a: Accepted) -> Serve {
        Arc::clone(&a.ctx.handler).plain(self, a)
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn serve(self, a: Accepted) -> Serve {
        Arc::clone(&a.ctx.handler).tls(self, a)
    }
}

pub(crate) async fn serve<S: Stream>(
    stream: S,
    peer: SocketAddr,
    proto: &'static str,
    ctx: Arc<ServeCtx>,
    listener: Arc<ListenerLimits>,
    slot: OpenSlot,
    stop: Stop,
) {
    let a = Accepted {
        peer,
        proto,
        ctx,
        listener,
        slot,
        stop,
    };
    stream.serve(a).await;
}

async fn run<H, S>(handler: Arc<H>, stream: S, a: Accepted)
where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        peer,
        proto,
        ctx,
        listener,
        slot,
        mut stop,
    } = a;
    let _live = ctx.tracker.token();
    let activity = Arc::new(Activity::default());
    let heads = Arc::new(HeadWatch::default());
    let stream = Sniffed::new(stream, Arc::clone(&heads));
    // An HTTP/1.1 connection idle this long gives hyper's buffers back (see `proto`).
    let parkable = {
        let activity = Arc::clone(&activity);
        let heads = Arc::clone(&heads);
        move || {
            activity
                .idle_deadline(PARK_AFTER)
                .filter(|_| heads.between_requests())
        }
    };
    let info = Arc::new(ConnInfo {
        peer,
        peer_value: peer_value(peer.ip()),
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
    let requests = Arc::clone(&activity);
    let service = service_fn(move |req: Request<Incoming>| {
        let busy = requests.start();
        if req.version() == Version::HTTP_2 {
            saw_h2.store(true, Ordering::Relaxed);
        }
        let handler = Arc::clone(&handler);
        let info = Arc::clone(&info);
        async move {
            let resp = handler.call(&info, req).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let conn = listener
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .park_when_idle(parkable);
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
    watchdog.arm(Instant::now() + head_limit);
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
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin> Body for Tracked<B> {
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
