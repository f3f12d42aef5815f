//! Watches the raw bytes of HTTP/1.1 request heads for framing hyper quietly repairs: both
//! `Content-Length` and `Transfer-Encoding` (hyper drops the length), or `Content-Length` twice
//! with the same value (hyper keeps one), and lines ended by a bare LF (hyper accepts them; a
//! backend or another proxy may not, and read the head differently). Those are smuggling attempts or broken clients; the
//! handler refuses them with a 400 instead of forwarding a repaired request.
//!
//! The watcher follows the stream from head to head: after a head without a body, or with a
//! `Content-Length` body (skipped by count), the next byte starts the next head. A chunked body
//! or an HTTP/2 preface ends the watch: the first would need a second chunk parser, and hyper
//! reads both consistently anyway. `Upgrade` and `CONNECT` do not: a refused upgrade (a plain
//! answer) leaves the connection speaking HTTP/1, and after a real tunnel opens no request is
//! asked about again, so watching its bytes can flag nothing that matters.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the watcher saw of a connection's stream, shared with its requests: which request head,
/// if any, had ambiguous framing, and whether the stream is between requests.
#[derive(Debug)]
pub struct HeadWatch {
    /// Index (0-based) of the first ambiguous head, `u32::MAX` for none.
    first_bad: AtomicU32,
    /// HTTP/1 requests handled so far on the connection.
    handled: AtomicU32,
    /// Index of the head of which no byte was read yet, with everything before it read in
    /// full; `u32::MAX` while a head or a body is partly read, or the watch has ended.
    awaited: AtomicU32,
    /// The last write to the client had to wait: bytes of a response are still buffered.
    write_waiting: AtomicBool,
}

impl Default for HeadWatch {
    fn default() -> Self {
        HeadWatch {
            first_bad: AtomicU32::new(u32::MAX),
            handled: AtomicU32::new(0),
            awaited: AtomicU32::new(0),
            write_waiting: AtomicBool::new(false),
        }
    }
}

impl HeadWatch {
    /// Called once per HTTP/1 request, in order: whether this request's head was ambiguous.
    pub fn next_is_ambiguous(&self) -> bool {
        let n = self.handled.fetch_add(1, Ordering::AcqRel);
        self.first_bad.load(Ordering::Acquire) == n
    }

    /// Whether the HTTP/1 stream is between requests: every head read so far was handed to
    /// the handler, every body read to its end, no byte of the next head read, and no response
    /// byte waits to be written. (Whether the handler has answered is the caller's to know.)
    pub fn between_requests(&self) -> bool {
        !self.write_waiting.load(Ordering::Acquire)
            && self.awaited.load(Ordering::Acquire) == self.handled.load(Ordering::Acquire)
    }

    fn await_head(&self, index: u32) {
        self.awaited.store(index, Ordering::Release);
    }

    fn wrote<T>(&self, polled: &Poll<io::Result<T>>) {
        self.write_waiting
            .store(polled.is_pending(), Ordering::Release);
    }
}

/// The longest header name we look for, plus its colon.
const KEY_LEN: usize = "transfer-encoding:".len();
/// Past this many bytes in one head, hyper refuses the request anyway.
const MAX_HEAD: usize = 1024 * 1024;

#[derive(Debug)]
enum State {
    Head(Head),
    /// Skipping a `Content-Length` body; head `next` follows it.
    Body {
        left: u64,
        next: u32,
    },
    Done,
}

#[derive(Debug, Default)]
struct Head {
    index: u32,
    bytes: usize,
    /// The start of the current line, lowercased, up to `KEY_LEN` bytes.
    line: [u8; KEY_LEN],
    line_len: usize,
    /// Whether the current line's name was already looked at.
    keyed: bool,
    /// Bytes in the current line so far, `\r` included.
    line_bytes: usize,
    lines: u32,
    content_lengths: u32,
    transfer_encodings: u32,
    /// The previous byte was `\r`.
    prev_cr: bool,
    /// A line ended with a bare `\n`: a parser that wants CRLF would read this head differently.
    bare_lf: bool,
    /// While on the first `Content-Length` line: its digits so far.
    in_length: bool,
    length: Option<u64>,
}

impl Head {
    fn at(index: u32) -> Head {
        Head {
            index,
            ..Head::default()
        }
    }
}

/// A connection's stream, with its request heads watched as they are read.
pub struct Sniffed<S> {
    inner: S,
    state: State,
    watch: Arc<HeadWatch>,
}

impl<S> Sniffed<S> {
    pub fn new(inner: S, watch: Arc<HeadWatch>) -> Self {
        Sniffed {
            inner,
            state: State::Head(Head::default()),
            watch,
        }
    }

    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Body { left, next } => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.watch.await_head(*next);
                        self.state = State::Head(Head::at(*next));
                    }
                }
                State::Head(h) => {
                    if h.bytes == 0 {
                        self.watch.await_head(u32::MAX);
                    }
                    // Line by line: only a line's name and a Content-Length's value are read
                    // byte by byte; the rest is skipped by the search for its end.
                    let nl = memchr::memchr(b'\n', bytes);
                    let line = &bytes[..nl.unwrap_or(bytes.len())];
                    h.bytes += line.len() + usize::from(nl.is_some());
                    if h.bytes > MAX_HEAD {
                        self.state = State::Done;
                        return;
                    }
                    for &b in line {
                        if h.keyed && !h.in_length {
                            break;
                        }
                        if b != b'\r' {
                            byte(h, b);
                        }
                    }
                    if let Some(&last) = line.last() {
                        h.prev_cr = last == b'\r';
                    }
                    h.line_bytes += line.len();
                    let Some(i) = nl else { return };
                    bytes = &bytes[i + 1..];
                    if let Some(next) = end_line(h) {
                        let index = h.index;
                        self.finish_head(index, next);
                    }
                }
            }
        }
    }

    /// Head `index` ended; `next` says what follows it.
    fn finish_head(&mut self, index: u32, next: Next) {
        self.state = match next {
            Next::Ambiguous => {
                // The handler refuses it and the connection closes: nothing more to watch.
                let _ = self.watch.first_bad.compare_exchange(
                    u32::MAX,
                    index,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                State::Done
            }
            Next::Body(0) => {
                self.watch.await_head(index + 1);
                State::Head(Head::at(index + 1))
            }
            Next::Body(left) => State::Body {
                left,
                next: index + 1,
            },
            Next::Unknown => State::Done,
        };
    }
}

enum Next {
    Ambiguous,
    Body(u64),
    Unknown,
}

fn byte(h: &mut Head, b: u8) {
    if h.in_length {
        match b {
            b'0'..=b'9' => {
                h.length = h
                    .length
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')));
            }
            b' ' | b'\t' => {}
            _ => {
                h.in_length = false;
                h.length = None;
            }
        }
    }
    if !h.keyed && h.line_len < KEY_LEN {
        let lower = b.to_ascii_lowercase();
        // Only lines that start like `content-length:`, `transfer-encoding:` or `PRI * ` matter:
        // any other line is skipped after its first byte.
        if h.line_len == 0 && !matches!(lower, b'c' | b't' | b'p') {
            h.keyed = true;
            return;
        }
        h.line[h.line_len] = lower;
        h.line_len += 1;
        if b == b':' || h.line_len == KEY_LEN {
            h.keyed = true;
            let key = &h.line[..h.line_len];
            if key == b"content-length:" {
                h.content_lengths += 1;
                h.in_length = h.content_lengths == 1;
            } else if key == b"transfer-encoding:" {
                h.transfer_encodings += 1;
            }
        }
    }
}

/// A line ended: `Some` when it was the empty line that ends a head.
fn end_line(h: &mut Head) -> Option<Next> {
    if h.lines == 0 && h.line[..h.line_len].starts_with(b"pri * ") {
        // The HTTP/2 preface: not ours to watch.
        return Some(Next::Unknown);
    }
    let empty = h.line_bytes == 0 || (h.line_bytes == 1 && h.prev_cr);
    let bare_lf = !h.prev_cr;
    h.prev_cr = false;
    h.line_len = 0;
    h.line_bytes = 0;
    h.keyed = false;
    h.in_length = false;
    // Empty lines before the request line are allowed and skipped (RFC 9112 2.2), however
    // many and whether CRLF or bare LF, as hyper's parser does: they neither end a head nor
    // make it ambiguous, so this head keeps its index.
    if empty && h.lines == 0 {
        return None;
    }
    h.bare_lf |= bare_lf;
    h.lines += 1;
    if !empty {
        return None;
    }
    let ambiguous =
        h.bare_lf || h.content_lengths > 1 || (h.content_lengths > 0 && h.transfer_encodings > 0);
    Some(if ambiguous {
        Next::Ambiguous
    } else if h.transfer_encodings > 0 {
        Next::Unknown
    } else if h.content_lengths == 1 {
        h.length.map_or(Next::Unknown, Next::Body)
    } else {
        Next::Body(0)
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !matches!(self.state, State::Done) && buf.filled().len() > before {
            let this = &mut *self;
            this.scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch.wrote(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` and says which head was flagged.
    fn flagged(bytes: &[u8], step: usize) -> Option<u32> {
        let watch = Arc::new(HeadWatch::default());
        let mut s = Sniffed::new((), Arc::clone(&watch));
        for piece in bytes.chunks(step) {
            s.scan(piece);
        }
        let n = watch.first_bad.load(Ordering::Acquire);
        (n != u32::MAX).then_some(n)
    }

    #[test]
    fn ambiguous_heads_are_found_wherever_they_are() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let dup =
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nCONTENT-LENGTH: 3\r\n\r\nabc";
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let lf = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\nX-B: 2\r\n\r\n";
        let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        for step in [1, 3, 1000] {
            assert_eq!(flagged(cl_te, step), Some(0));
            assert_eq!(flagged(dup, step), Some(0));
            assert_eq!(flagged(get, step), None);
            assert_eq!(flagged(lf, step), Some(0));
            // A refused upgrade or CONNECT leaves the connection speaking HTTP/1: the next
            // head is still watched (after a real tunnel no request asks again).
            for tunnel in [
                &b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"[..],
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            ] {
                let mut t = tunnel.to_vec();
                t.extend_from_slice(cl_te);
                assert_eq!(flagged(&t, step), Some(1), "{step}");
            }
            // A body that looks like headers is skipped by its length.
            assert_eq!(flagged(post, step), None, "{step}");
            // Empty lines before a request line are skipped, CRLF or bare LF, however many:
            // they neither shift which head is which nor make a clean one ambiguous.
            for lead in [&b"\r\n"[..], b"\n", b"\r\n\r\n", b"\n\r\n\n"] {
                let with = |head: &[u8]| [lead, head].concat();
                assert_eq!(flagged(&with(get), step), None, "{step}");
                assert_eq!(flagged(&with(dup), step), Some(0), "{step}");
                assert_eq!(
                    flagged(&[&with(get)[..], &with(cl_te)].concat(), step),
                    Some(1)
                );
            }
            // A head is measured by its bytes however they are split into reads.
            let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
            big.extend(std::iter::repeat_n(b'a', 600_000));
            big.extend_from_slice(b"\r\n\r\n");
            big.extend_from_slice(cl_te);
            assert_eq!(flagged(&big, step), Some(1), "{step}");
            let mut later = get.to_vec();
            later.extend_from_slice(post);
            later.extend_from_slice(cl_te);
            assert_eq!(flagged(&later, step), Some(2), "{step}");
        }
    }

    proptest::proptest! {
        /// Bodies (whatever they hold) and how the bytes are split into reads never make the
        /// watch flag a clean request, nor miss an ambiguous one after them.
        #[test]
        fn bodies_and_read_sizes_never_confuse_the_watch(
            requests in proptest::collection::vec(
                (
                    proptest::prelude::any::<bool>(),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                    0usize..3,
                ),
                1..6,
            ),
            step in 1usize..64,
            bad_last in proptest::prelude::any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for (post, body, blank) in &requests {
                for _ in 0..*blank {
                    stream.extend_from_slice(if *blank == 1 { b"\n" } else { b"\r\n" });
                }
                if *post {
                    stream.extend_from_slice(
                        format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len())
                            .as_bytes(),
                    );
                    stream.extend_from_slice(body);
                } else {
                    stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                }
            }
            if bad_last {
                stream.extend_from_slice(
                    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
            }
            let expected = bad_last.then_some(requests.len() as u32);
            proptest::prop_assert_eq!(flagged(&stream, step), expected);
        }
    }

    #[test]
    fn the_watch_matches_heads_to_requests_in_order() {
        let w = HeadWatch::default();
        w.first_bad.store(1, Ordering::Release);
        assert!(!w.next_is_ambiguous());
        assert!(w.next_is_ambiguous());
        assert!(!w.next_is_ambiguous());
    }
}
