//! Checks on a request head before anything of it is forwarded: framing that two parsers could
//! read differently (request smuggling), host confusion, header names a backend could misread,
//! and the listener's body size limit. Pure functions over the parsed head; hyper has already
//! refused what it cannot parse (bad names, bare CR, NUL, obs-fold, bad chunk sizes).

use http::header::{self, HeaderMap, HeaderName};
use http::{StatusCode, Uri, Version};

use crate::config::limits::{Limits, Underscores};
use crate::stats::limits::Limit;

/// Why a request is refused: the answer's status, the limit counted, and a reason for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub limit: Limit,
    pub why: &'static str,
}

/// What the handler must do with an acceptable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepted {
    /// Headers with underscores in their names are to be removed.
    pub drop_underscored: bool,
}

const fn bad(why: &'static str) -> Rejection {
    Rejection {
        status: StatusCode::BAD_REQUEST,
        limit: Limit::MalformedRequest,
        why,
    }
}

/// Headers that only make sense on one HTTP/1.1 connection; forbidden in HTTP/2 (RFC 9113
/// 8.2.2). `te` is allowed there only as `trailers`.
static H2_FORBIDDEN: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub fn check(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Accepted, Rejection> {
    let h2 = version == Version::HTTP_2;
    // One pass over the fields instead of a lookup per name: a request carries a handful.
    let (mut first_te, mut first_cl, mut host) = (None, None, None);
    let (mut tes, mut cls, mut hosts, mut underscored) = (0u32, 0u32, 0u32, false);
    let check_underscores = limits.headers_with_underscores != Underscores::Allow;
    for (name, value) in headers {
        if *name == header::TRANSFER_ENCODING {
            tes += 1;
            first_te.get_or_insert(value);
        } else if *name == header::CONTENT_LENGTH {
            cls += 1;
            first_cl.get_or_insert(value);
        } else if *name == header::HOST {
            hosts += 1;
            host.get_or_insert(value);
        } else if check_underscores && name.as_str().as_bytes().contains(&b'_') {
            underscored = true;
        }
    }
    if tes > 1 {
        return Err(bad("more than one Transfer-Encoding header"));
    }
    if cls > 1 {
        return Err(bad("more than one Content-Length header"));
    }
    if let Some(te) = first_te {
        if h2 || version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding is not allowed in this HTTP version"));
        }
        // Only plain `chunked`: anything else is a coding we would have to trust the backend
        // to read exactly as we did.
        if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("Transfer-Encoding other than `chunked`"));
        }
        if first_cl.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
    }
    let length = match first_cl {
        None => None,
        Some(v) => Some(content_length(v.as_bytes()).ok_or(bad("invalid Content-Length"))?),
    };
    if let (Some(n), Some(max)) = (length, limits.max_request_body_bytes)
        && n > max
    {
        return Err(Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            limit: Limit::MaxRequestBodyBytes,
            why: "the request body is larger than this listener allows",
        });
    }

    if hosts > 1 {
        return Err(bad("more than one Host header"));
    }
    if host.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err(bad("invalid Host"));
    }
    if host.is_none() && version == Version::HTTP_11 && uri.authority().is_none() {
        return Err(bad("HTTP/1.1 request without Host"));
    }
    if let (Some(host), Some(authority)) = (host, uri.authority())
        && !same_host(host.as_bytes(), authority.as_str().as_bytes(), uri)
    {
        return Err(bad("Host disagrees with the request target's authority"));
    }

    if h2 {
        if H2_FORBIDDEN.iter().any(|h| headers.contains_key(h)) {
            return Err(bad("connection-specific header in an HTTP/2 request"));
        }
        if headers
            .get_all(header::TE)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            return Err(bad("TE other than `trailers` in an HTTP/2 request"));
        }
    }

    let mut accepted = Accepted::default();
    if underscored {
        if limits.headers_with_underscores == Underscores::Reject {
            return Err(Rejection {
                status: StatusCode::BAD_REQUEST,
                limit: Limit::HeaderWithUnderscore,
                why: "header name with an underscore",
            });
        }
        accepted.drop_underscored = true;
    }
    Ok(accepted)
}

/// `host[:port]` as RFC 3986 allows it (reg-name, IPv4 or an IPv6 literal): no user info, no
/// path, no spaces, nothing a backend could split differently.
fn valid_host(h: &[u8]) -> bool {
    h.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// Whether `Host` names what the target's authority names: the same host (case-insensitive) and
/// the same port, a missing port being the scheme's default (`a` and `a:80` agree for http).
pub fn same_host(host: &[u8], authority: &[u8], uri: &Uri) -> bool {
    let default = match uri.scheme_str() {
        Some("https") => Some(&b"443"[..]),
        Some("http") => Some(&b"80"[..]),
        _ => None,
    };
    let ((h1, p1), (h2, p2)) = (split_port(host), split_port(authority));
    h1.eq_ignore_ascii_case(h2) && p1.or(default) == p2.or(default)
}

/// A `host[:port]` split at its port: after the last `:` unless that `:` is inside an IPv6
/// literal.
fn split_port(a: &[u8]) -> (&[u8], Option<&[u8]>) {
    match a.iter().rposition(|&b| b == b':') {
        Some(i) if !a[i..].contains(&b']') => (&a[..i], Some(&a[i + 1..])),
        _ => (a, None),
    }
}

/// Digits only, no sign, no list, no overflow (RFC 9110 8.6).
pub fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Removes every header whose name has an underscore.
pub fn drop_underscored(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn run(v: Version, uri: &str, pairs: &[(&str, &str)]) -> Result<Accepted, Rejection> {
        check(v, &uri.parse().unwrap(), &head(pairs), &Limits::default())
    }

    #[test]
    fn plain_requests_pass() {
        let ok = [("host", "a"), ("content-length", "10")];
        assert_eq!(run(Version::HTTP_11, "/", &ok), Ok(Accepted::default()));
        let chunked = [("host", "a"), ("transfer-encoding", "Chunked")];
        assert!(run(Version::HTTP_11, "/", &chunked).is_ok());
        assert!(run(Version::HTTP_10, "/", &[]).is_ok());
        assert!(run(Version::HTTP_2, "http://a/", &[]).is_ok());
        assert!(run(Version::HTTP_11, "http://A/x", &[("host", "a")]).is_ok());
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "+5")],
            &[("content-length", "5,5")],
            &[("content-length", "99999999999999999999")],
            &[("transfer-encoding", "xchunked")],
            &[("transfer-encoding", "chunked, identity")],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ];
        for pairs in cases {
            let mut all = vec![("host", "a")];
            all.extend_from_slice(pairs);
            let e = run(Version::HTTP_11, "/", &all).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{pairs:?}");
        }
    }

    #[test]
    fn host_confusion_is_refused() {
        assert!(run(Version::HTTP_11, "/", &[]).is_err());
        assert!(run(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]).is_err());
        assert!(run(Version::HTTP_11, "http://evil/", &[("host", "a")]).is_err());
        assert!(run(Version::HTTP_2, "http://a/", &[("host", "b")]).is_err());
        for bad in ["a b", "user@a", "a/b", "a?b", "a#b", "a\tb"] {
            assert!(
                run(Version::HTTP_11, "/", &[("host", bad)]).is_err(),
                "{bad}"
            );
        }
        assert!(run(Version::HTTP_11, "/", &[("host", "[::1]:8080")]).is_ok());
    }

    #[test]
    fn host_and_authority_agree_up_to_the_default_port() {
        let http: Uri = "http://a/".parse().unwrap();
        let https: Uri = "https://a/".parse().unwrap();
        assert!(same_host(b"a", b"A:80", &http));
        assert!(same_host(b"a:80", b"a", &http));
        assert!(!same_host(b"a:443", b"a", &http));
        assert!(same_host(b"a:443", b"a", &https));
        assert!(!same_host(b"a:8080", b"a:8081", &http));
        assert!(!same_host(b"b", b"a", &http));
        assert!(same_host(b"[::1]:80", b"[::1]", &http));
        assert!(!same_host(b"[::1]", b"[::2]", &http));
    }

    #[test]
    fn http2_connection_headers_are_refused() {
        for pairs in [
            &[("connection", "close")][..],
            &[("transfer-encoding", "chunked")],
            &[("upgrade", "websocket")],
            &[("te", "gzip")],
        ] {
            assert!(
                run(Version::HTTP_2, "http://a/", pairs).is_err(),
                "{pairs:?}"
            );
        }
        assert!(run(Version::HTTP_2, "http://a/", &[("te", "trailers")]).is_ok());
    }

    #[test]
    fn underscores_follow_the_setting() {
        let pairs = [("host", "a"), ("x_user", "admin")];
        let h = head(&pairs);
        let uri: Uri = "/".parse().unwrap();
        let mut l = Limits::default();
        assert_eq!(
            check(Version::HTTP_11, &uri, &h, &l),
            Ok(Accepted {
                drop_underscored: true
            })
        );
        l.headers_with_underscores = Underscores::Reject;
        assert_eq!(
            check(Version::HTTP_11, &uri, &h, &l).unwrap_err().limit,
            Limit::HeaderWithUnderscore
        );
        l.headers_with_underscores = Underscores::Allow;
        assert_eq!(
            check(Version::HTTP_11, &uri, &h, &l),
            Ok(Accepted::default())
        );
        let mut h = h;
        drop_underscored(&mut h);
        assert!(h.contains_key("host") && !h.contains_key("x_user"));
    }

    #[test]
    fn a_declared_body_over_the_limit_is_413() {
        let l = Limits {
            max_request_body_bytes: Some(10),
            ..Limits::default()
        };
        let h = head(&[("host", "a"), ("content-length", "11")]);
        let e = check(Version::HTTP_11, &"/".parse().unwrap(), &h, &l).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let h = head(&[("host", "a"), ("content-length", "10")]);
        assert!(check(Version::HTTP_11, &"/".parse().unwrap(), &h, &l).is_ok());
    }
}
