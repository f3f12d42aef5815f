//! Parsing a head with httparse and writing the head the other side gets: hop-by-hop headers
//! (the standard ones and any the Connection header names) dropped, `X-Forwarded-For`
//! appended to, everything else copied byte for byte. Pure functions over byte slices.

use std::mem::MaybeUninit;

use crate::framing::{Chunked, Framing};

/// hyper's default limit for headers per message.
const MAX_HEADERS: usize = 100;
/// Names a Connection header may list before the request is refused.
const MAX_LISTED: usize = 8;

/// Why a head cannot be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Malformed, or framing that could smuggle a second request: 400.
    Bad,
    /// More headers than the table holds: 431.
    TooLarge,
}

/// What the connection loop needs to know about a parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes of the head in the input, up to and including the blank line.
    pub(crate) len: usize,
    pub(crate) body: Framing,
    /// The client asked for the connection to close after this exchange (or is HTTP/1.0,
    /// whose keep-alive this proxy does not offer).
    pub(crate) close: bool,
    /// HTTP/1.1 (responses may be reused); HTTP/1.0 requests go upstream as 1.0.
    pub(crate) http11: bool,
    pub(crate) head: bool,
    /// `Expect: 100-continue` with a body: the proxy answers 100 itself, as nginx does.
    pub(crate) expect_continue: bool,
}

/// What the connection loop needs to know about a parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) len: usize,
    pub(crate) body: Framing,
    /// 1xx other than 101: forwarded, then the final response follows.
    pub(crate) interim: bool,
    /// The backend connection may carry another request after this body.
    pub(crate) reusable: bool,
    /// The client connection closes after this response (`Connection: close` was written).
    pub(crate) close_client: bool,
}

/// The header facts both directions need, gathered in one pass.
struct Scan<'a> {
    listed: [&'a [u8]; MAX_LISTED],
    n_listed: usize,
    close: bool,
    keep_alive: bool,
    length: Option<u64>,
    transfer_encoding: Option<&'a [u8]>,
    hosts: usize,
    expect_continue: bool,
}

fn scan<'a>(headers: &[httparse::Header<'a>]) -> Result<Scan<'a>, Reject> {
    let mut s = Scan {
        listed: [&[]; MAX_LISTED],
        n_listed: 0,
        close: false,
        keep_alive: false,
        length: None,
        transfer_encoding: None,
        hosts: 0,
        expect_continue: false,
    };
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    s.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    s.keep_alive = true;
                } else if !token.is_empty() {
                    if s.n_listed == MAX_LISTED {
                        return Err(Reject::Bad);
                    }
                    s.listed[s.n_listed] = token;
                    s.n_listed += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).ok_or(Reject::Bad)?;
            if s.length.is_some_and(|m| m != n) {
                return Err(Reject::Bad);
            }
            s.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Several headers form one list; the last coding is what frames the body.
            s.transfer_encoding = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"host") {
            s.hosts += 1;
        } else if name.eq_ignore_ascii_case(b"expect") {
            s.expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    Ok(s)
}

/// Parses the request head at the start of `buf`. `Ok(None)`: the head is not complete yet.
/// On success `out` holds the head to send upstream.
pub(crate) fn request(
    buf: &[u8],
    client_ip: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<Request>, Reject> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(_) => return Err(Reject::Bad),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::Bad);
    };
    let http11 = version == 1;
    let s = scan(req.headers)?;
    // One Host, required in HTTP/1.1 (RFC 9112 3.2); more than one is a 400 there.
    if s.hosts > 1 || (http11 && s.hosts == 0) {
        return Err(Reject::Bad);
    }
    let body = match (s.transfer_encoding, s.length) {
        // Both framings at once is the request-smuggling shape: refuse it, as hyper does not
        // need to (it re-frames) but a pass-through proxy must.
        (Some(_), Some(_)) => return Err(Reject::Bad),
        (Some(te), None) if last_is_chunked(te) => Framing::Chunked(Chunked::new()),
        (Some(_), None) => return Err(Reject::Bad),
        (None, Some(0)) | (None, None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };
    let expect_continue = s.expect_continue && body != Framing::Empty;

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(if http11 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    let mut xff = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = true;
            continue;
        }
        if drops(name, &s) || (expect_continue && name.eq_ignore_ascii_case(b"expect")) {
            continue;
        }
        header(out, name, h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff {
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                out.extend_from_slice(trim(h.value));
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(b"\r\n\r\n");

    Ok(Some(Request {
        len,
        body,
        close: s.close || !http11,
        http11,
        head: method == "HEAD",
        expect_continue,
    }))
}

/// Parses the response head at the start of `buf`, answering `req`. On success `out` holds
/// the head to send the client.
pub(crate) fn response(
    buf: &[u8],
    req: &Request,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, Reject> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(_) => return Err(Reject::Bad),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(Reject::Bad);
    };
    // Upgrade is stripped from every request, so a 101 is a backend error.
    if code == 101 {
        return Err(Reject::Bad);
    }
    let interim = (100..200).contains(&code);
    let s = scan(resp.headers)?;
    let body = if req.head || interim || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (s.transfer_encoding, s.length) {
            (Some(te), _) if last_is_chunked(te) => Framing::Chunked(Chunked::new()),
            (Some(_), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let backend_keeps = if version == 1 { !s.close } else { s.keep_alive };
    let reusable = req.http11 && backend_keeps && body != Framing::UntilClose;
    let close_client = !interim && (req.close || body == Framing::UntilClose);

    out.clear();
    out.extend_from_slice(if req.http11 {
        b"HTTP/1.1 "
    } else {
        b"HTTP/1.0 "
    });
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if !drops(h.name.as_bytes(), &s) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(Response {
        len,
        body,
        interim,
        reusable,
        close_client,
    }))
}

/// Hop-by-hop (RFC 9110 7.6.1, plus the non-standard Keep-Alive and Proxy-Connection) or named
/// in Connection. Transfer-Encoding stays: the body passes through with its framing.
fn drops(name: &[u8], s: &Scan) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || s.listed[..s.n_listed]
            .iter()
            .any(|l| name.eq_ignore_ascii_case(l) && !is_framing(name))
}

/// A Connection header cannot make the proxy drop the headers that frame the body.
fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

fn last_is_chunked(te: &[u8]) -> bool {
    te.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| trim(c).eq_ignore_ascii_case(b"chunked"))
}

fn content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    // 19 digits always fit in a u64.
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> (Result<Option<Request>, Reject>, String) {
        let mut out = Vec::new();
        let r = request(raw.as_bytes(), b"10.0.0.9", &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn request_head_is_rewritten() {
        let raw = "GET /a?b HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive, X-Secret\r\n\
                   x-secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\n\
                   X-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\nGET /next";
        let (r, out) = req(raw);
        let r = r.unwrap().unwrap();
        assert_eq!(r.len, raw.len() - "GET /next".len());
        assert_eq!(r.body, Framing::Empty);
        assert!(!r.close && r.http11 && !r.head);
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\r\n"
        );
    }

    #[test]
    fn request_framing() {
        let (r, _) = req("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().body, Framing::Length(12));
        let (r, out) =
            req("POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().body, Framing::Chunked(Chunked::new()));
        assert!(out.contains("transfer-encoding: gzip, chunked\r\n"));
        let (r, _) = req("GET / HTTP/1.0\r\n\r\n");
        let r = r.unwrap().unwrap();
        assert!(r.close && !r.http11);
        let (r, _) = req("GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
        assert!(r.unwrap().unwrap().close);
    }

    #[test]
    fn expect_continue_is_answered_here_not_forwarded() {
        let (r, out) =
            req("PUT / HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n");
        assert!(r.unwrap().unwrap().expect_continue);
        assert!(!out.contains("expect"));
    }

    #[test]
    fn partial_head_waits() {
        assert_eq!(req("GET / HTTP/1.1\r\nhost: h\r\n").0, Ok(None));
    }

    #[test]
    fn bad_requests_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: -3\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nho st: h\r\n\r\n",
            "G\0T / HTTP/1.1\r\nhost: h\r\n\r\n",
        ] {
            assert_eq!(req(raw).0, Err(Reject::Bad), "{raw:?}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(req(&many).0, Err(Reject::TooLarge));
    }

    fn resp(raw: &str, to: &str) -> (Response, String) {
        let mut scratch = Vec::new();
        let r = request(to.as_bytes(), b"1.1.1.1", &mut scratch)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let p = response(raw.as_bytes(), &r, &mut out).unwrap().unwrap();
        (p, String::from_utf8(out).unwrap())
    }

    const GET: &str = "GET / HTTP/1.1\r\nhost: h\r\n\r\n";

    #[test]
    fn response_head_is_rewritten() {
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
            GET,
        );
        assert_eq!(r.body, Framing::Length(5));
        assert!(r.reusable && !r.close_client && !r.interim);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn response_framing_and_reuse() {
        let (r, _) = resp("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", GET);
        assert_eq!(r.body, Framing::Chunked(Chunked::new()));
        let (r, out) = resp("HTTP/1.1 200 OK\r\n\r\n", GET);
        assert_eq!(r.body, Framing::UntilClose);
        assert!(!r.reusable && r.close_client && out.ends_with("connection: close\r\n\r\n"));
        let (r, _) = resp(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            GET,
        );
        assert!(!r.reusable && !r.close_client);
        let (r, _) = resp("HTTP/1.1 204 No Content\r\n\r\n", GET);
        assert_eq!(r.body, Framing::Empty);
        let (r, _) = resp(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            "HEAD / HTTP/1.1\r\nhost: h\r\n\r\n",
        );
        assert_eq!(r.body, Framing::Empty);
        let (r, _) = resp("HTTP/1.1 100 Continue\r\n\r\n", GET);
        assert!(r.interim && !r.close_client && r.body == Framing::Empty);
        let (r, out) = resp(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        );
        assert!(!r.reusable && r.close_client && out.starts_with("HTTP/1.0 200 OK\r\n"));
    }

    #[test]
    fn bad_responses_are_refused() {
        let mut out = Vec::new();
        let r = request(GET.as_bytes(), b"1.1.1.1", &mut out)
            .unwrap()
            .unwrap();
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            assert_eq!(
                response(raw.as_bytes(), &r, &mut out),
                Err(Reject::Bad),
                "{raw:?}"
            );
        }
    }
}
