//! Where a message body ends. Bodies pass through unchanged; only their framing is tracked, so
//! a chunked body is never decoded and re-encoded (hyper does both).

/// How the body after a head is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a request without Content-Length or Transfer-Encoding, a response to HEAD,
    /// 1xx, 204 and 304.
    Empty,
    /// Content-Length: the bytes still to come.
    Length(u64),
    /// Transfer-Encoding ending in chunked.
    Chunked(Chunked),
    /// A response with neither: the body ends when the backend closes.
    UntilClose,
}

/// The body's bytes are not valid chunked framing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

impl Framing {
    /// Takes the body's share of `avail`: how many leading bytes belong to the body, and whether
    /// the body ends within them.
    pub(crate) fn take(&mut self, avail: &[u8]) -> Result<(usize, bool), Invalid> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(rest) => {
                let n = (*rest).min(avail.len() as u64);
                *rest -= n;
                // n <= avail.len(), so it fits in usize.
                Ok((n as usize, *rest == 0))
            }
            Framing::Chunked(c) => Ok(match c.feed(avail)? {
                Some(n) => (n, true),
                None => (avail.len(), false),
            }),
            Framing::UntilClose => Ok((avail.len(), false)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    EndLf,
}

/// The position inside a chunked body: chunk-size line, data, CRLF, ..., last chunk, trailer
/// section, CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    digits: u8,
}

impl Chunked {
    pub(crate) fn new() -> Self {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
        }
    }

    /// Feeds the next bytes of the body. `Some(n)`: the body ends after the first `n` bytes of
    /// `buf`; `None`: all of `buf` is body and more is to come.
    fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, Invalid> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Size => {
                    if let Some(v) = hex(b) {
                        // 16 hex digits fill a u64; more would overflow.
                        if self.digits == 16 {
                            return Err(Invalid);
                        }
                        self.size = self.size << 4 | u64::from(v);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(Invalid);
                    } else {
                        self.state = match b {
                            b'\r' => State::SizeLf,
                            b';' | b' ' | b'\t' => State::Ext,
                            _ => return Err(Invalid),
                        };
                    }
                    i += 1;
                }
                State::Ext => match memchr::memchr2(b'\r', b'\n', &buf[i..]) {
                    Some(p) if buf[i + p] == b'\r' => {
                        i += p + 1;
                        self.state = State::SizeLf;
                    }
                    Some(_) => return Err(Invalid),
                    None => i = buf.len(),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Invalid);
                    }
                    i += 1;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(self.size)
                    };
                    self.size = 0;
                    self.digits = 0;
                }
                State::Data(rest) => {
                    let n = rest.min((buf.len() - i) as u64);
                    // n <= buf.len() - i.
                    i += n as usize;
                    self.state = if n == rest {
                        State::DataCr
                    } else {
                        State::Data(rest - n)
                    };
                }
                State::DataCr | State::DataLf => {
                    let want = if self.state == State::DataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if b != want {
                        return Err(Invalid);
                    }
                    i += 1;
                    self.state = if want == b'\r' {
                        State::DataLf
                    } else {
                        State::Size
                    };
                }
                State::TrailerStart => {
                    i += 1;
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' | b' ' | b'\t' => return Err(Invalid),
                        _ => State::Trailer,
                    };
                }
                State::Trailer => match memchr::memchr(b'\n', &buf[i..]) {
                    Some(p) => {
                        i += p + 1;
                        self.state = State::TrailerStart;
                    }
                    None => i = buf.len(),
                },
                State::EndLf => {
                    if b != b'\n' {
                        return Err(Invalid);
                    }
                    return Ok(Some(i + 1));
                }
            }
        }
        Ok(None)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns where it ended.
    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, Invalid> {
        let mut f = Framing::Chunked(Chunked::new());
        let mut at = 0;
        for piece in body.chunks(step) {
            let (n, done) = f.take(piece)?;
            if done {
                return Ok(Some(at + n));
            }
            assert_eq!(n, piece.len());
            at += n;
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_whatever_the_read_boundaries() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for step in 1..=body.len() {
            assert_eq!(end_of(body, step), Ok(Some(end)), "step {step}");
        }
    }

    #[test]
    fn incomplete_body_is_not_ended() {
        assert_eq!(end_of(b"5\r\nhel", 2), Ok(None));
        assert_eq!(end_of(b"0\r\n\r", 1), Ok(None));
        assert_eq!(end_of(b"0\r\nx-sum: 1\r\n", 3), Ok(None));
    }

    #[test]
    fn bad_framing_is_rejected() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"11111111111111111\r\n",
            b"0\r\n\n",
            b"1;a\nb",
        ] {
            assert_eq!(
                end_of(bad, 64),
                Err(Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_counts_down_and_leaves_the_rest() {
        let mut f = Framing::Length(7);
        assert_eq!(f.take(b"abc"), Ok((3, false)));
        assert_eq!(f.take(b"defgNEXT"), Ok((4, true)));
        assert_eq!(Framing::Empty.take(b"NEXT"), Ok((0, true)));
        assert_eq!(Framing::UntilClose.take(b"abc"), Ok((3, false)));
    }
}
