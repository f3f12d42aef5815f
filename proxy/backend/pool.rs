//! Keep-alive connections to one backend.
//!
//! A pool per backend means the only lock a request takes is its backend's, held for a `Vec`
//! push or pop (hyper-util's pooled client takes a lock shared by every backend and spawns a task
//! per request). A connection goes back to the pool when its response has been read to the end
//! (the response body's guard hands it back), never while bytes are still owed on it; idle
//! connections are reused newest first so the oldest age out.
//!
//! Tried and measured: driving each connection from the request task instead of its own task
//! (no cross-task wake-ups) cost about 1 µs more per request under load, because every wake of
//! the client's connection then re-polls the upstream side too.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use super::multiplex::{Conns, Driver, H2Sender, Lease, Stream as H2Stream};
use crate::body::ReqBody;
use crate::config::model::{BackendAddr, Protocol, Transport};
use crate::shard::{self, Padded};

/// Idle connections kept per backend; past this, finished connections are closed.
const MAX_IDLE: usize = 256;

type Sender = http1::SendRequest<ReqBody>;

/// Why an exchange with a backend failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP/2 connection this request waited for, opened by another request, failed to
    /// open: that request's failure is the backend's; this one only moves on.
    #[error("the connection this request waited for failed to open: {0}")]
    SharedConnect(#[source] io::Error),
    #[error("connection handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Exchange(hyper::Error),
    /// The HTTP/2 backend refused the request unprocessed: `REFUSED_STREAM`, or a GOAWAY that
    /// excluded its stream (RFC 9113 8.7). Safe to send again, whatever the method.
    #[error("refused unprocessed: {0}")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl SendError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect(_) | SendError::SharedConnect(_) | SendError::Handshake(_)
        )
    }

    pub(crate) fn hyper(&self) -> Option<&hyper::Error> {
        match self {
            SendError::Exchange(e) | SendError::Handshake(e) => Some(e),
            SendError::Connect(_) | SendError::SharedConnect(_) | SendError::Refused(_) => None,
        }
    }
}

/// A response head, and the connection it came on.
pub(crate) struct Sent<B = Incoming, C = Conn> {
    pub(crate) resp: Response<B>,
    pub(crate) conn: C,
}

/// A failed send, with the request when it never reached the backend.
pub(crate) struct Failed {
    pub(crate) error: SendError,
    /// Boxed: a failure is rare, and inline it would grow every future that holds a result.
    pub(crate) unsent: Option<Box<Request<ReqBody>>>,
    /// The connection had carried earlier requests (and may have been closed under this one).
    pub(crate) reused: bool,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

pub(crate) struct ConnPool {
    addr: BackendAddr,
    transport: Transport,
    /// The upstream's TLS client config with this protocol's ALPN offer.
    tls_client: Option<Arc<ClientConfig>>,
    /// One stack of idle HTTP/1.1 connections per worker: a connection's task runs on the
    /// worker that opened it, so only that worker reuses it.
    idle: Box<[Padded<Mutex<Vec<Idle>>>]>,
    /// HTTP/2 connections, shared by every worker.
    h2: Conns,
    /// `protocol: auto` over TLS: the backend picked `h2` on the last connection.
    chose_h2: AtomicBool,
}

/// A connection checked out for one exchange; give it back with [`ConnPool::checkin`] once the
/// response was read to the end, or drop it to close it (HTTP/1.1) or to free its stream
/// (HTTP/2).
pub(crate) struct Conn {
    kind: ConnKind,
}

enum ConnKind {
    /// `None` when the connection closed as its response came.
    Http1(Option<Sender>),
    /// The stream is held (counted on its connection) until this goes.
    Http2 { _stream: H2Stream },
}

/// A new connection, in the protocol it speaks.
enum Connected {
    Http1(Sender),
    Http2(H2Sender, Driver),
}

impl ConnPool {
    pub(crate) fn new(addr: BackendAddr, transport: Transport, workers: usize) -> Self {
        let tls_client = transport
            .tls
            .as_ref()
            .map(|t| super::tls::with_alpn(&t.client, transport.protocol));
        ConnPool {
            addr,
            transport,
            tls_client,
            idle: (0..workers.max(1)).map(|_| Padded::default()).collect(),
            h2: Conns::new(),
            chose_h2: AtomicBool::new(false),
        }
    }

    /// Whether requests go out over HTTP/2 now.
    fn speaks_h2(&self) -> bool {
        match self.transport.protocol {
            Protocol::Http1 => false,
            Protocol::Http2 => true,
            Protocol::Auto => self.chose_h2.load(Ordering::Relaxed),
        }
    }

    fn shard(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[shard::current() % self.idle.len()].0
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Idle connections right now, over all workers.
    fn idle(&self) -> usize {
        self.idle
            .iter()
            .map(|s| s.0.lock().map_or(0, |i| i.len()))
            .sum()
    }

    /// Sends `req` on a pooled connection, or a new one when none is idle or `fresh` asks for
    /// one. A request that never left (the pooled connection turned out closed) goes again, on
    /// another pooled connection or a new one; nothing that reached the backend is ever
    /// replayed here. When no connection could be made the request comes back untouched, so
    /// the caller may send it elsewhere.
    /// `now` is when the try started (an idle connection older than the idle timeout is not
    /// reused).
    pub(crate) async fn send(
        &self,
        req: Request<ReqBody>,
        fresh: bool,
        now: Instant,
    ) -> Result<Sent, Failed> {
        if self.speaks_h2() {
            Box::pin(self.send_h2(req, fresh, now)).await
        } else {
            self.send_h1(req, fresh, now).await
        }
    }

    async fn send_h1(
        &self,
        req: Request<ReqBody>,
        fresh: bool,
        now: Instant,
    ) -> Result<Sent, Failed> {
        let mut req = req;
        loop {
            let pooled = if fresh { None } else { self.checkout(now) };
            let (sender, reused) = match pooled {
                Some(sender) => (sender, true),
                // Boxed: a connect (and TLS handshake) future is large and rarely needed; inline
                // it would be copied with this future on every request.
                None => match Box::pin(self.connect()).await {
                    Ok(Connected::Http1(sender)) => (sender, false),
                    // `auto`: the backend chose HTTP/2.
                    Ok(Connected::Http2(sender, driver)) => {
                        let lease = self.h2.add(sender, driver, self.transport.idle_timeout);
                        return Box::pin(self.exchange_h2(lease, req, false)).await;
                    }
                    Err(e) => {
                        return Err(Failed {
                            error: e,
                            unsent: Some(Box::new(req)),
                            reused: false,
                        });
                    }
                },
            };
            let mut sender = sender;
            let answer = sender.try_send_request(req);
            let mut sender = Some(sender);
            let sent = answer_of(&mut sender, std::pin::pin!(answer)).await;
            match sent {
                Ok(resp) => {
                    return Ok(Sent {
                        resp,
                        conn: Conn {
                            kind: ConnKind::Http1(sender),
                        },
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    unsent => {
                        return Err(Failed {
                            error: SendError::Exchange(e.into_error()),
                            unsent: unsent.map(Box::new),
                            reused,
                        });
                    }
                },
            }
        }
    }

    /// Sends `req` over HTTP/2: on a stream of an open connection with room, or on a new
    /// connection (`fresh` asks for one).
    async fn send_h2(
        &self,
        req: Request<ReqBody>,
        fresh: bool,
        now: Instant,
    ) -> Result<Sent, Failed> {
        let idle_timeout = self.transport.idle_timeout;
        let pooled = if fresh {
            None
        } else {
            self.h2.lease(now, idle_timeout)
        };
        if let Some(lease) = pooled {
            return self.exchange_h2(lease, req, true).await;
        }
        let opening = match self.h2.opening().await {
            Ok(opening) => opening,
            // An open this request waited for failed: so does this request, at once (the
            // request that opened it counts the failure against the backend, once).
            Err(e) => {
                return Err(Failed {
                    error: SendError::SharedConnect(e),
                    unsent: Some(Box::new(req)),
                    reused: false,
                });
            }
        };
        if !fresh && let Some(lease) = self.h2.lease(Instant::now(), idle_timeout) {
            drop(opening);
            return self.exchange_h2(lease, req, true).await;
        }
        let connected = self.connect().await;
        match &connected {
            Err(SendError::Connect(e)) => opening.failed(e),
            Err(e) => opening.failed(&io::Error::other(e.to_string())),
            Ok(_) => drop(opening),
        }
        match connected {
            Ok(Connected::Http2(sender, driver)) => {
                let lease = self.h2.add(sender, driver, self.transport.idle_timeout);
                self.exchange_h2(lease, req, false).await
            }
            // `auto`: the backend chose HTTP/1.1 this time.
            Ok(Connected::Http1(mut sender)) => {
                let mut req = req;
                super::h2req::to_h1(&mut req);
                let answer = sender.try_send_request(req);
                let mut sender = Some(sender);
                match answer_of(&mut sender, std::pin::pin!(answer)).await {
                    Ok(resp) => Ok(Sent {
                        resp,
                        conn: Conn {
                            kind: ConnKind::Http1(sender),
                        },
                    }),
                    Err(mut e) => Err(Failed {
                        unsent: e.take_message().map(Box::new),
                        error: SendError::Exchange(e.into_error()),
                        reused: false,
                    }),
                }
            }
            Err(e) => Err(Failed {
                error: e,
                unsent: Some(Box::new(req)),
                reused: false,
            }),
        }
    }

    /// One request on one stream of a shared connection. A connection whose backend refused
    /// the request (GOAWAY) takes no more.
    async fn exchange_h2(
        &self,
        lease: Lease,
        mut req: Request<ReqBody>,
        reused: bool,
    ) -> Result<Sent, Failed> {
        let scheme = if self.transport.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        super::h2req::to_h2(&mut req, scheme, &self.addr);
        let Lease { mut sender, stream } = lease;
        let answer = sender.try_send_request(req);
        // Not held while waiting: a request queued just as the connection's task ended is
        // handed back once the last sender is gone (see `multiplex`), and this would be one.
        drop(sender);
        match answer.await {
            Ok(resp) => Ok(Sent {
                resp,
                conn: Conn {
                    kind: ConnKind::Http2 { _stream: stream },
                },
            }),
            Err(mut e) => {
                let unsent = e.take_message().map(|mut r| {
                    super::h2req::to_h1(&mut r);
                    Box::new(r)
                });
                let error = e.into_error();
                let error = if super::h2req::refused(&error) {
                    stream.retire();
                    SendError::Refused(Box::new(error))
                } else {
                    SendError::Exchange(error)
                };
                Err(Failed {
                    error,
                    unsent,
                    reused,
                })
            }
        }
    }

    /// Takes a connection back after its response was read to the end. Its task may not have
    /// marked it ready yet; then a small task waits for that (or for it to close).
    pub(crate) fn checkin(self: &Arc<Self>, conn: Conn, now: Instant) {
        let mut sender = match conn.kind {
            ConnKind::Http1(Some(sender)) => sender,
            // The stream is freed as the lease goes.
            ConnKind::Http1(None) | ConnKind::Http2 { .. } => return,
        };
        if sender.is_ready() {
            self.put(sender, now);
        } else if !sender.is_closed() {
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender, Instant::now());
                }
            });
        }
    }

    fn put(&self, sender: Sender, now: Instant) {
        let Ok(mut idle) = self.shard().lock() else {
            return;
        };
        // Oldest first, since every connection is pushed with the time it came back.
        let stale = idle.partition_point(|i| {
            now.saturating_duration_since(i.since) >= self.transport.idle_timeout
        });
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }

    fn checkout(&self, now: Instant) -> Option<Sender> {
        let mut idle = self.shard().lock().ok()?;
        while let Some(candidate) = idle.pop() {
            if now.saturating_duration_since(candidate.since) < self.transport.idle_timeout
                && candidate.sender.is_ready()
            {
                return Some(candidate.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Connected, SendError> {
        let timeout = self.transport.connect_timeout;
        // One bound for the TCP connect and, for TLS backends, the TLS handshake.
        let connected = tokio::time::timeout(timeout, async {
            let stream = self.tcp_connect().await?;
            let _ = stream.set_nodelay(true);
            match (&self.transport.tls, &self.tls_client) {
                (Some(tls), Some(client)) => {
                    super::tls::connect_with(client, tls, &self.addr, stream)
                        .await
                        .map(|s| Stream::Tls(Box::new(s)))
                }
                _ => Ok(Stream::Plain(stream)),
            }
        })
        .await
        .map_err(|_| {
            SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ))
        })?
        .map_err(SendError::Connect)?;
        let h2 = match (&connected, self.transport.protocol) {
            (Stream::Tls(s), Protocol::Http2 | Protocol::Auto) => {
                s.get_ref().1.alpn_protocol() == Some(b"h2")
            }
            (_, Protocol::Http2) => true,
            _ => false,
        };
        if self.transport.protocol == Protocol::Auto {
            self.chose_h2.store(h2, Ordering::Relaxed);
        }
        match (connected, h2) {
            (Stream::Plain(s), false) => handshake(s).await.map(Connected::Http1),
            (Stream::Tls(s), false) => handshake(*s).await.map(Connected::Http1),
            (Stream::Plain(s), true) => handshake_h2(s).await,
            (Stream::Tls(s), true) => handshake_h2(*s).await,
        }
    }

    async fn tcp_connect(&self) -> io::Result<TcpStream> {
        let authority = &self.addr.authority;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse() {
            return TcpStream::connect(SocketAddr::new(ip, port)).await;
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        for addr in tokio::net::lookup_host((host, port)).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Waits for the response head of a request handed to `sender`'s connection. The
/// connection's task may end just as the request is queued for it (the backend closed it);
/// hyper's queue is emptied when its reader goes, but a request that lands a moment later
/// stays queued until the sender is dropped, and nobody would answer it. So the sender is
/// watched while the answer is awaited: once its connection is closed, the sender is dropped,
/// which hands the request back unsent through `answer`.
async fn answer_of<F: Future>(
    sender: &mut Option<Sender>,
    mut answer: std::pin::Pin<&mut F>,
) -> F::Output {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Some(s) = sender.as_mut()
            && let Poll::Ready(Err(_)) = s.poll_ready(cx)
        {
            *sender = None;
            return answer.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn handshake<S>(stream: S) -> Result<Sender, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A new HTTP/2 connection: its sender, and the driver [`Conns::add`] runs.
async fn handshake_h2<S>(stream: S) -> Result<Connected, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // A backend that stopped answering is found between requests too, not only by the
        // next request's timeout.
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        // The backend's final GOAWAY is read even if it resets the connection after it.
        .handshake(TokioIo::new(super::h2io::ReadsFirst::new(stream)))
        .await
        .map_err(SendError::Handshake)?;
    let driver = Box::pin(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(Connected::Http2(sender, driver))
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("addr", &self.addr.as_str())
            .field("idle", &self.idle())
            .finish()
    }
}

#[cfg(test)]
#[path = "pool_h2_tests.rs"]
mod h2_tests;
