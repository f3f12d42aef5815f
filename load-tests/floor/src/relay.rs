//! Moving one message from one socket to the other: its head, then its body as the body's
//! framing delimits it, bytes passing through unchanged.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::buf::Buf;
use crate::framing::Framing;

/// Which socket failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Reading (or the framing of what was read was invalid, or the stream ended early).
    Src,
    Dst,
}

/// Sends `head`, then the body: first its bytes already in `buf`, then what `src` yields,
/// until `body` says it ended (`UntilClose`: until `src` ends). Bytes after the body stay in
/// `buf` (the next pipelined request, or a backend's excess).
pub(crate) async fn message(
    src: &mut TcpStream,
    buf: &mut Buf,
    dst: &mut TcpStream,
    head: &[u8],
    body: &mut Framing,
    limit: Option<Duration>,
) -> Result<(), Side> {
    let (n, mut done) = body.take(buf.filled()).map_err(|_| Side::Src)?;
    timed(limit, write_two(dst, head, &buf.filled()[..n]))
        .await
        .map_err(|_| Side::Dst)?;
    buf.consume(n);
    while !done {
        let got = timed(limit, buf.read_from(src))
            .await
            .map_err(|_| Side::Src)?;
        if got == 0 {
            if *body == Framing::UntilClose {
                return Ok(());
            }
            return Err(Side::Src);
        }
        let (n, end) = body.take(buf.filled()).map_err(|_| Side::Src)?;
        timed(limit, dst.write_all(&buf.filled()[..n]))
            .await
            .map_err(|_| Side::Dst)?;
        buf.consume(n);
        done = end;
    }
    Ok(())
}

/// Writes `a` then `b`: one writev when the socket takes both, as nginx does.
async fn write_two(s: &mut TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    if b.is_empty() {
        return s.write_all(a).await;
    }
    let mut slices = [IoSlice::new(a), IoSlice::new(b)];
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = s.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// `f` bounded by `limit` (nginx's client_header, proxy_read and send timeouts are 60 s
/// each); `None` runs it unbounded, to measure what the timers cost. The timer is armed only
/// when `f` has to wait: a write the socket takes at once, or a read of bytes already there,
/// reads no clock and touches no timer wheel.
pub(crate) async fn timed<T>(
    limit: Option<Duration>,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let mut f = pin!(f);
    let Some(d) = limit else {
        return f.await;
    };
    if let Poll::Ready(r) = poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        return r;
    }
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}
