//! Which HTTP a client connection speaks, and hyper's connection that serves it; an HTTP/1.1
//! connection left idle lets go of hyper's state until its next request.
//!
//! A connection that starts with the HTTP/2 preface is served as HTTP/2 (prior knowledge, or
//! after ALPN `h2`), any other as HTTP/1.1. hyper-util's `auto` builder does the same, but hands
//! hyper the bytes it read to decide (up to 24) in a read of their own: hyper's first read then
//! returns only those, its second finds less than a whole read's room left in its 8 KiB buffer
//! and doubles it, and hyper never shrinks a buffer. Here the bytes read to decide reach hyper
//! together with whatever else the socket already holds, in one read.
//!
//! An idle keep-alive connection still holds hyper's read and write buffers (8 KiB each) and
//! its dispatcher: with 10,000 of them that was most of the proxy's memory. Once a connection
//! has been between requests for [`PARK_AFTER`] it is parked: hyper's connection is taken
//! apart, only the socket and the service stay, and the next bytes from the client start a
//! new hyper connection. Parking waits for a quiet moment instead of following every response
//! because a new hyper connection costs more than a request's worth of allocations.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::clock::LazyTimer;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The client connection preface of HTTP/2 (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP/1.1 connection stays between requests before it is parked. Longer than the
/// gaps of a busy client (re-creating hyper's connection would cost more than it saves), short
/// enough that connections idling for their keep-alive time hold little.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(2);

/// A listener's HTTP/1.1 and HTTP/2 settings; serves a connection in the one it speaks.
pub struct ConnBuilder {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

impl ConnBuilder {
    pub fn new() -> Self {
        ConnBuilder {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
        }
    }

    /// Serves `io` with `service` (HTTP/1.1 with upgrades, or HTTP/2) once its first bytes
    /// tell which.
    pub fn serve_connection_with_upgrades<I, S>(&self, io: I, service: S) -> Connection<'_, I, S>
    where
        S: HttpService<Incoming>,
    {
        Connection {
            builder: self,
            state: State::Deciding {
                io,
                service,
                first: [0; H2_PREFACE.len()],
                filled: 0,
            },
            park: None,
        }
    }
}

impl Default for ConnBuilder {
    fn default() -> Self {
        ConnBuilder::new()
    }
}

/// Says from when an HTTP/1.1 connection may be parked: `None` while it may not (a request in
/// progress, a request head or body partly read).
pub type ParkAt = fn() -> Option<Instant>;

/// One client connection: deciding its protocol, then served by hyper.
pub struct Connection<'a, I, S, P = ParkAt>
where
    S: HttpService<Incoming>,
{
    builder: &'a ConnBuilder,
    state: State<I, S>,
    park: Option<Park<P>>,
}

struct Park<P> {
    timer: LazyTimer,
    at: P,
}

enum State<I, S>
where
    S: HttpService<Incoming>,
{
    /// Reading the first bytes until they are the HTTP/2 preface, or cannot be.
    Deciding {
        io: I,
        service: S,
        first: [u8; 24],
        filled: usize,
    },
    /// Boxed: a parked connection (most idle ones) then holds a pointer's size here, not
    /// hyper's connection (over 600 bytes).
    Http1(Box<http1::UpgradeableConnection<Replay<I>, S>>),
    /// HTTP/1.1 between requests, without hyper's state: waiting for the next request's bytes.
    Parked {
        io: Replay<I>,
        service: S,
    },
    Http2(Pin<Box<http2::Connection<Replay<I>, S, TokioExecutor>>>),
    /// Done, or asked to stop with no request started: nothing to finish.
    Stopped,
}

impl<'a, I, S> Connection<'a, I, S>
where
    S: HttpService<Incoming>,
{
    /// Parks the connection when it has idled for [`PARK_AFTER`] (HTTP/1.1 only). `at` gives
    /// the time from which it may (the end of the last request plus [`PARK_AFTER`]), or
    /// `None` while it may not: it must say `None` unless every request head read so far was
    /// answered, the last response was handed to hyper in full, and no byte of the next
    /// request was read, so that hyper has nothing in flight.
    pub fn park_when_idle<P>(self, at: P) -> Connection<'a, I, S, P>
    where
        P: Fn() -> Option<Instant>,
    {
        Connection {
            builder: self.builder,
            state: self.state,
            park: Some(Park {
                timer: LazyTimer::default(),
                at,
            }),
        }
    }
}

impl<I, S, B, P> Connection<'_, I, S, P>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    P: Fn() -> Option<Instant> + Unpin,
{
    /// Finishes the request in progress (HTTP/1.1) or the open streams (HTTP/2, GOAWAY), then
    /// ends; a connection with no request started ends at once.
    pub fn graceful_shutdown(mut self: Pin<&mut Self>) {
        // Never parked from now on: hyper may still wait (for the response to finish, or in
        // its shutdown while TLS's close_notify cannot be written), and a connection parked
        // then would wait for the client's next bytes, holding up the drain.
        self.park = None;
        match &mut self.state {
            State::Deciding { .. } | State::Parked { .. } => self.state = State::Stopped,
            State::Http1(conn) => Pin::new(&mut **conn).graceful_shutdown(),
            State::Http2(conn) => conn.as_mut().graceful_shutdown(),
            State::Stopped => {}
        }
    }

    /// Whether the park timer says it is time. Polled only while hyper waits.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.park {
            Some(park) => park.timer.poll_watch(cx, PARK_AFTER, &park.at),
            None => Poll::Pending,
        }
    }

    fn start_http1(&mut self, io: Replay<I>, service: S) {
        if let Some(park) = &mut self.park {
            park.timer.arm(Instant::now() + PARK_AFTER);
        }
        let conn = self.builder.http1.serve_connection(io, service);
        self.state = State::Http1(Box::new(conn.with_upgrades()));
    }

    /// Takes hyper's connection apart, keeping the socket and the service.
    fn park(&mut self) {
        let State::Http1(conn) = std::mem::replace(&mut self.state, State::Stopped) else {
            return;
        };
        // `None` only after an upgrade, when the connection has already finished.
        let Some(parts) = (*conn).into_parts() else {
            return;
        };
        if !parts.read_buf.is_empty() {
            // Bytes hyper read but did not use, where the caller saw a boundary: hyper and the
            // head watch disagree about this connection. Closing it (dropped here) is always
            // allowed between requests; going on is not safe.
            tracing::debug!("unused bytes where a connection was parked; closing it");
            return;
        }
        self.state = State::Parked {
            io: parts.io,
            service: parts.service,
        };
    }
}

impl<I, S, B, P> Future for Connection<'_, I, S, P>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    P: Fn() -> Option<Instant> + Unpin,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Deciding {
                    io, first, filled, ..
                } => {
                    let http2 = ready!(decide(io, first, filled, cx))?;
                    // Always taken: the state was `Deciding` just above.
                    if let State::Deciding {
                        io,
                        service,
                        first,
                        filled,
                    } = std::mem::replace(&mut this.state, State::Stopped)
                    {
                        let io = Replay::new(io, Bytes::copy_from_slice(&first[..filled]));
                        if http2 {
                            let conn = this.builder.http2.serve_connection(io, service);
                            this.state = State::Http2(Box::pin(conn));
                        } else {
                            this.start_http1(io, service);
                        }
                    }
                }
                State::Http1(conn) => {
                    if let Poll::Ready(done) = Pin::new(&mut **conn).poll(cx) {
                        return Poll::Ready(done.map_err(Into::into));
                    }
                    ready!(this.poll_park(cx));
                    this.park();
                }
                State::Parked { io, .. } => {
                    let mut next = [0; 32];
                    let mut buf = ReadBuf::new(&mut next);
                    let read = ready!(Pin::new(&mut *io).poll_read(cx, buf.unfilled()));
                    let got = Bytes::copy_from_slice(buf.filled());
                    // Always taken: the state was `Parked` just above.
                    if let State::Parked { mut io, service } =
                        std::mem::replace(&mut this.state, State::Stopped)
                    {
                        // hyper reads these bytes first, and an error or the end of the stream
                        // after them, as it would have without the pause.
                        io.prefix = got;
                        io.error = read.err();
                        this.start_http1(io, service);
                    }
                }
                State::Http2(conn) => return conn.as_mut().poll(cx).map_err(Into::into),
                State::Stopped => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Reads the first bytes into `first` until they are the whole HTTP/2 preface (`true`), stop
/// matching it or the stream ends (`false`).
fn decide<I: Read + Unpin>(
    io: &mut I,
    first: &mut [u8; 24],
    filled: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    while *filled < first.len() {
        let mut buf = ReadBuf::new(&mut first[*filled..]);
        ready!(Pin::new(&mut *io).poll_read(cx, buf.unfilled()))?;
        let n = buf.filled().len();
        let matches = first[*filled..*filled + n] == H2_PREFACE[*filled..*filled + n];
        *filled += n;
        if n == 0 || !matches {
            return Poll::Ready(Ok(false));
        }
    }
    Poll::Ready(Ok(true))
}

/// The stream with bytes already read put back in front; the read that returns them also
/// takes what the socket holds after them.
pub struct Replay<I> {
    inner: I,
    prefix: Bytes,
    /// An error the stream gave while the prefix was being returned: the next read reports it.
    error: Option<io::Error>,
}

impl<I> Replay<I> {
    fn new(inner: I, prefix: Bytes) -> Self {
        Replay {
            inner,
            prefix,
            error: None,
        }
    }
}

impl<I: Read + Unpin> Read for Replay<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.prefix.is_empty() {
            if let Some(e) = this.error.take() {
                return Poll::Ready(Err(e));
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        if n < this.prefix.len() {
            bytes::Buf::advance(&mut this.prefix, n);
            return Poll::Ready(Ok(()));
        }
        this.prefix = Bytes::new();
        if buf.remaining() == 0 || this.error.is_some() {
            return Poll::Ready(Ok(()));
        }
        // Bytes were returned whatever the socket says now: pending is fine (its waker is
        // registered, and a spurious wake costs nothing), an error waits for the next read.
        if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            this.error = Some(e);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: Write + Unpin> Write for Replay<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures_util::task::AtomicWaker;

    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::server::clock::Activity;
    use crate::server::sniff::{HeadWatch, Sniffed};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Runs `fut` while polling `conn`, which must not end meanwhile.
    async fn beside<C, F>(conn: &mut C, fut: F) -> F::Output
    where
        C: Future<Output = Result<(), BoxError>> + Unpin,
        F: Future,
    {
        tokio::select! {
            biased;
            end = conn => panic!("the connection ended: {end:?}"),
            out = fut => out,
        }
    }

    /// Reads one response with a Content-Length body; returns its body.
    async fn response(client: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0; 65536];
        loop {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a whole response");
            got.extend_from_slice(&chunk[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            while got.len() < end + 4 + length {
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed in a body");
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got.len(), end + 4 + length, "bytes after the response");
            return got.split_off(end + 4);
        }
    }

    /// A connection served as `conn::serve` does: the head watch, the activity, and the same
    /// parking condition; its service echoes the request body, or answers `big` bytes.
    fn serve<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        builder: &ConnBuilder,
        server: T,
        big: usize,
    ) -> impl Future<Output = Result<(), BoxError>> + Unpin + Parks + '_ {
        let heads = Arc::new(HeadWatch::default());
        let activity = Arc::new(Activity::default());
        let service = {
            let heads = Arc::clone(&heads);
            let activity = Arc::clone(&activity);
            service_fn(move |req: Request<Incoming>| {
                let busy = activity.start();
                assert!(!heads.next_is_ambiguous());
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let body = if big > 0 {
                        vec![b'x'; big].into()
                    } else {
                        body
                    };
                    drop(busy);
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                }
            })
        };
        let stream = TokioIo::new(Sniffed::new(server, Arc::clone(&heads)));
        builder
            .serve_connection_with_upgrades(stream, service)
            .park_when_idle(move || {
                activity
                    .idle_deadline(PARK_AFTER)
                    .filter(|_| heads.between_requests())
            })
    }

    trait Parks {
        fn is_parked(&self) -> bool;
        fn stop(&mut self);
    }

    impl<T, S, P> Parks for Connection<'_, TokioIo<Sniffed<T>>, S, P>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = Full<Bytes>, Error = hyper::Error> + Unpin,
        S::Future: Send + 'static,
        P: Fn() -> Option<Instant> + Unpin,
    {
        fn is_parked(&self) -> bool {
            matches!(self.state, State::Parked { .. })
        }

        fn stop(&mut self) {
            Pin::new(self).graceful_shutdown();
        }
    }

    /// A socket whose shutdown waits until the test opens `gate`, as TLS's does while its
    /// close_notify cannot be written (a client that stopped reading).
    struct HeldShutdown {
        inner: TcpStream,
        gate: Arc<Gate>,
    }

    #[derive(Default)]
    struct Gate {
        open: AtomicBool,
        waker: AtomicWaker,
    }

    impl Gate {
        fn open(&self) {
            self.open.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    impl AsyncRead for HeldShutdown {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HeldShutdown {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.gate.waker.register(cx.waker());
            if !self.gate.open.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn builder() -> ConnBuilder {
        let mut builder = ConnBuilder::new();
        builder
            .http1
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        builder
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_lets_go_of_hyper_and_serves_its_next_request() {
        let (mut client, server) = pair().await;
        let builder = builder();
        let mut conn = serve(&builder, server, 0);
        client
            .write_all(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert_eq!(beside(&mut conn, response(&mut client)).await, b"hello");
        assert!(!conn.is_parked(), "parked right after a response");
        beside(&mut conn, tokio::time::sleep(PARK_AFTER * 2)).await;
        assert!(conn.is_parked(), "an idle connection was not parked");

        // The next request comes in pieces: the first wakes the connection, which is not
        // parked again while its head is half read.
        client.write_all(b"POST /b HTTP/1.1\r\nHo").await.unwrap();
        beside(&mut conn, tokio::time::sleep(PARK_AFTER * 2)).await;
        assert!(!conn.is_parked(), "parked with half a head read");
        client
            .write_all(b"st: a\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!(beside(&mut conn, response(&mut client)).await, b"abc");

        // Parked again, a client that closes ends the connection cleanly.
        beside(&mut conn, tokio::time::sleep(PARK_AFTER * 2)).await;
        assert!(conn.is_parked());
        drop(client);
        assert!(conn.await.is_ok());
    }

    /// Sends a GET and reads its response while `conn` serves it.
    async fn get<C>(conn: &mut C, client: &mut TcpStream)
    where
        C: Future<Output = Result<(), BoxError>> + Unpin,
    {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        beside(conn, response(client)).await;
    }

    /// Asserts that a stopped `conn` ends and closes its socket while the client stays
    /// connected and silent (a parked connection would wait for it).
    async fn ends_with_the_client_silent<C>(conn: C, client: &mut TcpStream)
    where
        C: Future<Output = Result<(), BoxError>>,
    {
        let ended = tokio::time::timeout(PARK_AFTER * 100, conn).await;
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
        assert_eq!(client.read(&mut [0; 16]).await.unwrap(), 0, "not closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_shutdown_ends_a_parked_connection_at_once() {
        let (mut client, server) = pair().await;
        let builder = builder();
        let mut conn = serve(&builder, server, 0);
        get(&mut conn, &mut client).await;
        beside(&mut conn, tokio::time::sleep(PARK_AFTER * 2)).await;
        assert!(conn.is_parked());
        conn.stop();
        ends_with_the_client_silent(conn, &mut client).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_stopping_is_never_parked() {
        let (mut client, server) = pair().await;
        let gate = Arc::new(Gate::default());
        let server = HeldShutdown {
            inner: server,
            gate: Arc::clone(&gate),
        };
        let builder = builder();
        let mut conn = serve(&builder, server, 0);
        get(&mut conn, &mut client).await;
        // hyper closes the idle connection and waits in its shutdown past the time to park.
        conn.stop();
        beside(&mut conn, tokio::time::sleep(PARK_AFTER * 2)).await;
        gate.open();
        ends_with_the_client_silent(conn, &mut client).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_reads_slowly_is_never_cut_short() {
        // Larger than the sockets' buffers: hyper holds the rest until the client reads.
        const BIG: usize = 32 << 20;
        let (mut client, server) = pair().await;
        let builder = builder();
        let mut conn = serve(&builder, server, BIG);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        beside(&mut conn, tokio::time::sleep(PARK_AFTER * 3)).await;
        assert!(!conn.is_parked(), "parked with a response still buffered");
        assert_eq!(beside(&mut conn, response(&mut client)).await.len(), BIG);
    }

    #[tokio::test]
    async fn the_read_that_replays_bytes_also_takes_what_the_socket_holds() {
        let (mut client, server) = pair().await;
        client.write_all(b"T / HTTP/1.1\r\n\r\n").await.unwrap();
        server.readable().await.unwrap();
        let mut io = Replay::new(TokioIo::new(server), Bytes::from_static(b"GE"));
        let mut space = [0; 64];
        let mut buf = ReadBuf::new(&mut space);
        std::future::poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled()))
            .await
            .unwrap();
        assert_eq!(buf.filled(), b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn the_http2_preface_picks_http2_and_anything_else_http1() {
        let (mut client, server) = pair().await;
        let builder = builder();
        let service = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let mut conn = builder.serve_connection_with_upgrades(TokioIo::new(server), service);
        client.write_all(H2_PREFACE).await.unwrap();
        // A server speaking HTTP/2 answers the preface with its SETTINGS frame (type 4).
        let mut frame = [0; 9];
        beside(&mut conn, client.read_exact(&mut frame))
            .await
            .unwrap();
        assert_eq!(frame[3], 4, "not a SETTINGS frame: {frame:?}");
        assert!(matches!(conn.state, State::Http2(_)));

        let (mut client, server) = pair().await;
        let service = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let mut conn = builder.serve_connection_with_upgrades(TokioIo::new(server), service);
        // Starts like the preface, then is not.
        client
            .write_all(b"PRI /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0; 12];
        beside(&mut conn, client.read_exact(&mut answer))
            .await
            .unwrap();
        assert!(matches!(conn.state, State::Http1(_)));
    }
}
