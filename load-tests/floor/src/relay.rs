//! Moving one message from one socket to the other: its head, then its body as the body's
//! framing delimits it, bytes passing through unchanged.

use std::io::{self, IoSlice};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::buf::Buf;
use crate::framing::Framing;
use crate::timer::Timer;

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
    timer: &Timer,
) -> Result<(), Side> {
    let (n, mut done) = body.take(buf.filled()).map_err(|_| Side::Src)?;
    timer
        .timed(write_two(dst, head, &buf.filled()[..n]))
        .await
        .map_err(|_| Side::Dst)?;
    buf.consume(n);
    while !done {
        let got = timer
            .timed(buf.read_from(src))
            .await
            .map_err(|_| Side::Src)?;
        if got == 0 {
            if *body == Framing::UntilClose {
                return Ok(());
            }
            return Err(Side::Src);
        }
        let (n, end) = body.take(buf.filled()).map_err(|_| Side::Src)?;
        timer
            .timed(dst.write_all(&buf.filled()[..n]))
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
