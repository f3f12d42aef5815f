//! The byte stream under an HTTP/2 connection to a backend, so that a backend's last words are
//! read even when it resets the connection after them.
//!
//! A backend shutting a connection down gracefully sends its final GOAWAY (the last stream it
//! took) and closes once those streams are answered. If requests we opened after its GOAWAY
//! left are still unread in its socket when it closes (hyper's server, and so tonic's and
//! axum's, closes at once rather than lingering), its kernel resets the connection. Our next
//! write then fails, and h2 ends the connection on that write error without reading what had
//! already arrived: the GOAWAY saying which streams were never processed. Every open stream
//! then ends as "broken pipe", and a POST among them could have been processed, so it cannot
//! be sent again.
//!
//! So once the backend has closed or reset the connection, writes here are taken and dropped
//! (nothing could reach the backend anyway), and reads go on: h2 reads the GOAWAY, fails the
//! streams it excluded as refused (sent again on a new connection), and then reads the end of
//! the connection, which ends any other stream as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct ReadsFirst<S> {
    io: S,
    /// A write found the connection closed by the backend (or the network).
    gone: bool,
}

impl<S> ReadsFirst<S> {
    pub(crate) fn new(io: S) -> Self {
        ReadsFirst { io, gone: false }
    }
}

/// The connection is over for writing: the peer reset or closed it.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

impl<S: AsyncWrite + Unpin> ReadsFirst<S> {
    /// A write's result, with a closed connection turned into `done` (and remembered).
    fn written<T>(&mut self, r: Poll<io::Result<T>>, done: T) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Err(e)) if is_gone(&e) => {
                tracing::debug!(error = %e, "HTTP/2 backend closed the connection; reading what it sent before");
                self.gone = true;
                Poll::Ready(Ok(done))
            }
            r => r,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadsFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let gone = self.gone;
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            // A reset connection has all it will ever get queued already (a reset is accepted
            // only in sequence): nothing to wait for, so it ends here.
            Poll::Pending if gone => Poll::Ready(Ok(())),
            r => r,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadsFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.gone {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.gone {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.gone {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.written(r, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.gone {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.written(r, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A peer that leaves our bytes unread and closes resets the connection: writes fail, yet
    /// what it sent before is still there to read. Here writes go on, and the peer's last words
    /// are read, then the end.
    #[tokio::test]
    async fn what_a_resetting_peer_sent_is_read_after_writes_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ours = ReadsFirst::new(TcpStream::connect(addr).await.unwrap());
        let (mut peer, _) = listener.accept().await.unwrap();
        ours.write_all(b"a request the peer never reads")
            .await
            .unwrap();
        // Those bytes are at the peer (unread), so its close resets the connection.
        let mut probe = [0u8; 1];
        peer.peek(&mut probe).await.unwrap();
        peer.write_all(b"last words").await.unwrap();
        drop(peer);
        // Our kernel may take a write or two before the reset is in; then writes fail below
        // and succeed here.
        for _ in 0..1000 {
            if ours.gone {
                break;
            }
            ours.write_all(b"another request").await.unwrap();
            ours.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        assert!(ours.gone, "the peer's close never reset the connection");
        ours.write_all(b"and one more").await.unwrap();
        ours.shutdown().await.unwrap();
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    /// Without the adapter, the same sequence fails: the premise of this module.
    #[tokio::test]
    async fn a_plain_socket_fails_the_write_after_a_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ours = TcpStream::connect(addr).await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        ours.write_all(b"unread").await.unwrap();
        let mut probe = [0u8; 1];
        peer.peek(&mut probe).await.unwrap();
        drop(peer);
        let mut err = None;
        for _ in 0..1000 {
            if let Err(e) = ours.write_all(b"more").await {
                err = Some(e);
                break;
            }
            tokio::task::yield_now().await;
        }
        let err = err.expect("the peer's close never reset the connection");
        assert!(is_gone(&err), "{err}");
    }
}
