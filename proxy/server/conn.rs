//! Serves one accepted connection (HTTP/1.1 or prior-knowledge HTTP/2) until it ends or a stop
//! asks it to finish gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::shutdown::{Stop, Tracker};
use crate::http::handler::{self, ConnInfo};
use crate::shared::Shared;

/// Slowloris guard: a request head must arrive within this long (Envoy's and NGINX's default).
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
            .header_read_timeout(HEADER_READ_TIMEOUT)
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
    let info = Arc::new(ConnInfo {
        peer,
        proto,
        tracker: ctx.tracker.clone(),
    });
    let shared = Arc::clone(&ctx.shared);
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let info = Arc::clone(&info);
        async move { Ok::<_, Infallible>(handler::handle(&shared, &info, req).await) }
    });
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
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
