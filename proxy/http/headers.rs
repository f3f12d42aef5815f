//! Header rewriting between client and backend: hop-by-hop removal, `X-Forwarded-*`, sticky
//! keys, and the request head as the backends get it ([`prepare`], once, whatever the number
//! of tries). Pure functions over a head.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};

use crate::server::conn::ConnInfo;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message (RFC 9110 7.6.1), plus the
/// non-standard ones clients still send.
fn fixed_hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// True for an HTTP/1.1 request asking to switch protocols (WebSocket and the like). `h2c` is
/// never passed on: a backend must not be talked into HTTP/2 behind the proxy's back.
pub fn is_upgrade_request(version: http::Version, headers: &HeaderMap) -> bool {
    version == http::Version::HTTP_11
        && has_token(headers, &header::CONNECTION, "upgrade")
        && headers
            .get(header::UPGRADE)
            .is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c"))
}

/// True if any value of `name` lists `token` (comma-separated, case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Which of the fields the proxy removes or reads a request carries, from one pass over its
/// names. A lookup hashes its name (byte by byte for a non-standard one), and most requests
/// carry none of these: a name known absent needs no lookup. A bit may stay set after its field
/// was removed (a miss then costs a lookup); a field is never there without its bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Names(u16);

impl Names {
    pub(crate) const CONNECTION: Names = Names(1);
    pub(crate) const TRANSFER_ENCODING: Names = Names(1 << 5);
    pub(crate) const TRACEPARENT: Names = Names(1 << 7);
    pub(crate) const TRACESTATE: Names = Names(1 << 8);
    pub(crate) const SHADOW_MARK: Names = Names(1 << 9);
    pub(crate) const CONTENT_LENGTH: Names = Names(1 << 10);
    pub(crate) const CONTENT_TYPE: Names = Names(1 << 11);

    /// The names `headers` carries, of those tracked.
    pub(crate) fn scan(headers: &HeaderMap) -> Names {
        let mut seen = 0;
        for name in headers.keys() {
            seen |= bit(name.as_str());
        }
        Names(seen)
    }

    pub(crate) fn has(self, n: Names) -> bool {
        self.0 & n.0 != 0
    }

    /// Whether the `i`th of [`fixed_hop_by_hop`] is there.
    fn hop_by_hop(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// A tracked name's bit in [`Names`] (0 for any other): the hop-by-hop names in
/// [`fixed_hop_by_hop`]'s order, then the ones the proxy removes or reads. One `match` on the
/// name's text is cheaper per field than comparing it with each tracked name.
fn bit(name: &str) -> u16 {
    match name {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => 1 << 5,
        "upgrade" => 1 << 6,
        "traceparent" => Names::TRACEPARENT.0,
        "tracestate" => Names::TRACESTATE.0,
        "x-switchyard-shadow" => Names::SHADOW_MARK.0,
        "content-length" => Names::CONTENT_LENGTH.0,
        "content-type" => Names::CONTENT_TYPE.0,
        _ => 0,
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names. With
/// `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is set again.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_named(headers, Names::scan(headers), keep_upgrade);
}

/// [`strip_hop_by_hop`] for `headers` that carry `names`: most messages carry one hop-by-hop
/// header or none, and only those present are removed.
pub(crate) fn strip_named(headers: &mut HeaderMap, names: Names, keep_upgrade: bool) {
    let hop = fixed_hop_by_hop();
    if (0..hop.len()).any(|i| names.hop_by_hop(i)) {
        // Connection is removed with all its values in one lookup, then read for the names it
        // lists (beyond the common bare `close` / `keep-alive`).
        if let Entry::Occupied(conn) = headers.entry(header::CONNECTION) {
            let mut named: Vec<HeaderName> = Vec::new();
            for v in conn.remove_entry_mult().1 {
                if !is_fixed_token(v.as_bytes()) {
                    named.extend(
                        v.as_bytes()
                            .split(|&b| b == b',')
                            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok()),
                    );
                }
            }
            for name in named {
                let kept = is_end_to_end(&name) || (keep_upgrade && name == header::UPGRADE);
                if !kept {
                    headers.remove(&name);
                }
            }
        }
        // Connection (the first) is gone already.
        for (i, name) in hop.iter().enumerate().skip(1) {
            if names.hop_by_hop(i) && !(keep_upgrade && **name == header::UPGRADE) {
                headers.remove(*name);
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `Connection: close` or `keep-alive` name no extra header; skip the token walk for them.
fn is_fixed_token(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"close") || v.eq_ignore_ascii_case(b"keep-alive")
}

/// Headers a client may not strip by naming them in `Connection`: that would let it hide the
/// proxy's own forwarding headers from the backend.
fn is_end_to_end(name: &HeaderName) -> bool {
    name == header::HOST
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
}

/// Sets `X-Forwarded-For` (appending the peer to what the client sent, so the last entry is
/// always the real peer), `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    // One lookup for reading and writing it: hashing a name that is not a standard header's
    // walks its bytes, which costs more than the rest of this function's work per header.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(v) => {
            v.insert(peer.clone());
        }
        Entry::Occupied(mut o) => {
            let mut joined = Vec::with_capacity(64);
            for v in o.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.as_bytes());
            if let Ok(xff) = HeaderValue::from_bytes(&joined) {
                o.insert(xff);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

pub use crate::server::conn::peer_value;

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// Rewrites the client's request head, which carries `names`, for the backends (once, whatever
/// the number of tries).
pub(crate) fn prepare(parts: &mut Parts, names: Names, conn: &ConnInfo, upgrade: bool) {
    let from_h2 = parts.version == Version::HTTP_2;
    let host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    strip_named(&mut parts.headers, names, upgrade);
    add_forwarded(
        &mut parts.headers,
        &conn.peer_value,
        conn.proto,
        host.clone(),
    );
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = host
    {
        // HTTP/2 carries the host in `:authority`.
        parts.headers.insert(header::HOST, host);
    }
    if from_h2 {
        join_cookies(&mut parts.headers);
    }

    // Origin-form (`/path?query`), as a backend expects from a client.
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(pq);
    parts.version = Version::HTTP_11;
}

/// HTTP/2 may split `cookie` into many fields; HTTP/1.1 servers expect one (RFC 9113 8.2.3).
fn join_cookies(h: &mut http::HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// A copy of a prepared request head, for another try (extensions are not copied).
pub(crate) fn clone_head(head: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn one_scan_finds_each_tracked_name() {
        use crate::http::shadow::X_SWITCHYARD_SHADOW;
        use crate::trace::context;
        for (i, name) in fixed_hop_by_hop().iter().enumerate() {
            assert_eq!(bit(name.as_str()), 1 << i, "{name}");
        }
        let tracked = [
            (&header::CONNECTION, Names::CONNECTION),
            (&header::TRANSFER_ENCODING, Names::TRANSFER_ENCODING),
            (&header::CONTENT_LENGTH, Names::CONTENT_LENGTH),
            (&header::CONTENT_TYPE, Names::CONTENT_TYPE),
            (&context::TRACEPARENT, Names::TRACEPARENT),
            (&context::TRACESTATE, Names::TRACESTATE),
            (&X_SWITCHYARD_SHADOW, Names::SHADOW_MARK),
        ];
        for (name, n) in tracked {
            assert_eq!(Names(bit(name.as_str())), n, "{name}");
        }
        let h = map(&[
            ("host", "a"),
            ("Tracestate", "k=v"),
            ("te", "trailers"),
            ("x-other", "1"),
        ]);
        let names = Names::scan(&h);
        assert!(names.has(Names::TRACESTATE) && names.hop_by_hop(3));
        assert!(!names.has(Names::TRACEPARENT) && !names.has(Names::SHADOW_MARK));
        assert_eq!(Names::scan(&HeaderMap::new()), Names::default());
    }

    #[test]
    fn connection_cannot_strip_forwarding_headers() {
        let mut h = map(&[
            ("connection", "x-forwarded-for, host"),
            ("host", "a"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.contains_key("host") && h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn upgrades_keep_their_two_headers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(http::Version::HTTP_11, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        let h2c = map(&[
            ("connection", "upgrade, http2-settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(!is_upgrade_request(http::Version::HTTP_11, &h2c));
    }

    #[test]
    fn forwarded_for_always_ends_with_the_peer() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        add_forwarded(
            &mut h,
            &peer_value("192.0.2.7".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("shop")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop");
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &peer_value("::ffff:10.1.2.3".parse().unwrap()),
            "https",
            None,
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = map(&[("cookie", "a=1; session=abc ; b=2"), ("cookie", "z=9")]);
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "z"), Some(&b"9"[..]));
        assert_eq!(cookie(&h, "sess"), None);
    }
}
