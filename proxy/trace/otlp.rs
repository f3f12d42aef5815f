//! OTLP/HTTP's protobuf body for traces (`ExportTraceServiceRequest`), written by hand: the
//! handful of messages a batch of spans needs (opentelemetry-proto's `trace.proto`,
//! `common.proto`, `resource.proto`), each field with its number from those files. Pure: bytes
//! in, bytes out; the receiver test decodes the result with the official Python package.
//!
//! Attribute names follow OpenTelemetry's HTTP semantic conventions (server and client spans);
//! switchyard's own are under `switchyard.`.

use http::{Method, Version};

use super::span::{ClientSpan, RequestSpans, ServerSpan, WallClock};

/// Who sends the spans: the `resource` of every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resource {
    pub(crate) service_name: String,
    /// `service.instance.id`: which replica (the host name, when known).
    pub(crate) instance: Option<String>,
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

// Span.SpanKind
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
// Status.StatusCode
const STATUS_ERROR: u64 = 2;
// SpanFlags: whether the parent is known to be remote, and whether it is.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// The body of one export: every span of `batch` under one resource and one scope.
pub(crate) fn encode<'a>(
    resource: &Resource,
    clock: &WallClock,
    batch: impl IntoIterator<Item = &'a RequestSpans>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Text built per span (an address, a status) goes through one buffer, not an allocation.
    let mut scratch = String::with_capacity(64);
    // ExportTraceServiceRequest.resource_spans = 1
    nested(&mut out, 1, |b| {
        // ResourceSpans.resource = 1 -> Resource.attributes = 1
        nested(b, 1, |b| {
            attr_str(b, 1, "service.name", &resource.service_name);
            attr_str(b, 1, "service.version", env!("CARGO_PKG_VERSION"));
            if let Some(i) = &resource.instance {
                attr_str(b, 1, "service.instance.id", i);
            }
        });
        // ResourceSpans.scope_spans = 2
        nested(b, 2, |b| {
            // ScopeSpans.scope = 1 (InstrumentationScope: name = 1, version = 2)
            nested(b, 1, |b| {
                string(b, 1, "switchyard");
                string(b, 2, env!("CARGO_PKG_VERSION"));
            });
            for req in batch {
                b.reserve(512 * req.span_count());
                nested(b, 2, |b| {
                    server_span(b, clock, &req.server, req.tries.len(), &mut scratch)
                });
                for t in &req.tries {
                    nested(b, 2, |b| {
                        client_span(b, clock, &req.server, t, &mut scratch)
                    });
                }
            }
        });
    });
    out
}

fn server_span(
    b: &mut Vec<u8>,
    clock: &WallClock,
    s: &ServerSpan,
    tries: usize,
    scratch: &mut String,
) {
    common(b, s, s.span_id.bytes(), s.parent.as_ref().map(|p| &p.0[..]));
    let remote = if s.parent.is_some() {
        FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE
    } else {
        FLAG_HAS_IS_REMOTE
    };
    fixed32(b, 16, u32::from(s.sampled) | remote);
    // `{method} {route}`: the route is switchyard's low-cardinality name for what matched.
    match &s.route {
        Some(r) => string_parts(b, 5, &[method_name(&s.method), " ", r]),
        None => string(b, 5, method_name(&s.method)),
    }
    varint_field(b, 6, KIND_SERVER);
    fixed64(b, 7, clock.ns(s.start));
    fixed64(b, 8, clock.ns(s.end.max(s.start)));
    method_attrs(b, &s.method);
    attr_str(b, 9, "url.path", s.uri.path());
    attr_str(b, 9, "url.scheme", s.scheme);
    attr_str(b, 9, "network.protocol.version", protocol(s.version));
    if let Some((host, port)) = s.host.as_ref().and_then(|h| split_host(h.as_bytes())) {
        attr_str(b, 9, "server.address", host);
        if let Some(p) = port {
            attr_int(b, 9, "server.port", i64::from(p));
        }
    }
    show(scratch, s.peer.ip().to_canonical());
    attr_str(b, 9, "client.address", scratch);
    attr_str(b, 9, "network.peer.address", scratch);
    attr_int(b, 9, "network.peer.port", i64::from(s.peer.port()));
    if let Some(ua) = s.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
        attr_str(b, 9, "user_agent.original", ua);
    }
    attr_int(b, 9, "http.response.status_code", i64::from(s.status));
    let failed = s.status >= 500;
    if failed {
        let error = match s.error {
            Some(e) => e,
            None => show(scratch, s.status),
        };
        attr_str(b, 9, "error.type", error);
    }
    if let Some(r) = &s.route {
        attr_str(b, 9, "switchyard.route", r);
    }
    if let Some(u) = &s.upstream {
        attr_str(b, 9, "switchyard.upstream", u);
    }
    if let Some(a) = &s.backend {
        attr_str(b, 9, "switchyard.backend", a.as_str());
    }
    attr_int(b, 9, "switchyard.attempts", tries as i64);
    if let Some(e) = s.error {
        attr_str(b, 9, "switchyard.error", e);
    }
    if let Some(f) = &s.flags {
        attr_str(b, 9, "switchyard.flags", f);
    }
    if failed {
        status(b, s.error.unwrap_or(""));
    }
}

fn client_span(
    b: &mut Vec<u8>,
    clock: &WallClock,
    s: &ServerSpan,
    t: &ClientSpan,
    scratch: &mut String,
) {
    common(b, s, t.span_id.bytes(), Some(&s.span_id.0[..]));
    fixed32(b, 16, u32::from(s.sampled) | FLAG_HAS_IS_REMOTE);
    string(b, 5, method_name(&s.method));
    varint_field(b, 6, KIND_CLIENT);
    fixed64(b, 7, clock.ns(t.start));
    fixed64(b, 8, clock.ns(t.end.max(t.start)));
    method_attrs(b, &s.method);
    let authority = &t.backend.authority;
    let scheme = if t.tls { "https://" } else { "http://" };
    attr_parts(b, "url.full", &[scheme, authority.as_str(), s.uri.path()]);
    attr_str(
        b,
        9,
        "server.address",
        authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    );
    let port = authority.port_u16().unwrap_or(if t.tls { 443 } else { 80 });
    attr_int(b, 9, "server.port", i64::from(port));
    if let Some(v) = t.version {
        attr_str(b, 9, "network.protocol.version", protocol(v));
    }
    if let Some(code) = t.status {
        attr_int(b, 9, "http.response.status_code", i64::from(code));
    }
    if t.resend > 0 {
        attr_int(b, 9, "http.request.resend_count", i64::from(t.resend));
    }
    let error = match (t.error, t.status) {
        (Some(e), _) => Some(e),
        (None, Some(code)) if code >= 400 => Some(show(scratch, code)),
        _ => None,
    };
    if let Some(e) = error {
        attr_str(b, 9, "error.type", e);
    }
    attr_str(b, 9, "switchyard.upstream", &t.upstream);
    attr_str(b, 9, "switchyard.backend", authority.as_str());
    attr_str(b, 9, "switchyard.outcome", t.outcome);
    if let Some(e) = error {
        status(b, e);
    }
}

/// `v` as text in `scratch` (reused: no allocation once it is large enough).
fn show(scratch: &mut String, v: impl std::fmt::Display) -> &str {
    use std::fmt::Write;
    scratch.clear();
    let _ = write!(scratch, "{v}");
    scratch
}

/// Trace id, span id, trace state and parent: the first fields of every span.
fn common(b: &mut Vec<u8>, s: &ServerSpan, span: &[u8], parent: Option<&[u8]>) {
    bytes(b, 1, s.trace_id.bytes());
    bytes(b, 2, span);
    if let Some(ts) = &s.trace_state {
        bytes(b, 3, ts.as_bytes());
    }
    if let Some(p) = parent {
        bytes(b, 4, p);
    }
}

fn status(b: &mut Vec<u8>, message: &str) {
    // Span.status = 15: Status.message = 2, Status.code = 3
    nested(b, 15, |b| {
        if !message.is_empty() {
            string(b, 2, message);
        }
        varint_field(b, 3, STATUS_ERROR);
    });
}

/// `http.request.method`: a known method as is, any other as `_OTHER` with the original kept.
fn method_attrs(b: &mut Vec<u8>, m: &Method) {
    let name = method_name(m);
    attr_str(b, 9, "http.request.method", name);
    if name == "_OTHER" {
        attr_str(b, 9, "http.request.method_original", m.as_str());
    }
}

fn method_name(m: &Method) -> &str {
    match *m {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::CONNECT
        | Method::OPTIONS
        | Method::TRACE
        | Method::PATCH => m.as_str(),
        _ => "_OTHER",
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host[:port]` or `[v6]:port` from a `Host` value.
fn split_host(h: &[u8]) -> Option<(&str, Option<u16>)> {
    let h = std::str::from_utf8(h).ok()?;
    if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((ip, port));
    }
    match h.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok())),
        None => Some((h, None)),
    }
}

// ----- protobuf wire format -----

fn key(b: &mut Vec<u8>, field: u32, wire: u8) {
    varint(b, u64::from(field) << 3 | u64::from(wire));
}

pub(super) fn varint(b: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 10];
    let n = varint_into(&mut buf, v);
    b.extend_from_slice(&buf[..n]);
}

/// `v` as a varint at the start of `out`; its length.
fn varint_into(out: &mut [u8; 10], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    key(b, field, VARINT);
    varint(b, v);
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    key(b, field, I64);
    b.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    key(b, field, I32);
    b.extend_from_slice(&v.to_le_bytes());
}

fn bytes(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(b, field, LEN);
    varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

fn string(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes(b, field, v.as_bytes());
}

/// A length-delimited message written in place: one byte is reserved for its length and the
/// message moved up if the length needs more (spans are a few hundred bytes: a short move).
fn nested(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(b, field, LEN);
    let at = b.len();
    b.push(0);
    f(b);
    let end = b.len();
    let len = end - at - 1;
    if len < 0x80 {
        b[at] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let n = varint_into(&mut prefix, len as u64);
    b.resize(end + n - 1, 0);
    b.copy_within(at + 1..end, at + n);
    b[at..at + n].copy_from_slice(&prefix[..n]);
}

/// A string field made of `parts`, written without joining them first.
fn string_parts(b: &mut Vec<u8>, field: u32, parts: &[&str]) {
    key(b, field, LEN);
    varint(b, parts.iter().map(|p| p.len() as u64).sum());
    for p in parts {
        b.extend_from_slice(p.as_bytes());
    }
}

/// A span attribute (`KeyValue`, field 9) whose string value is `parts` joined.
fn attr_parts(b: &mut Vec<u8>, k: &str, parts: &[&str]) {
    nested(b, 9, |b| {
        string(b, 1, k);
        nested(b, 2, |b| string_parts(b, 1, parts));
    });
}

/// A `KeyValue` (key = 1, value = 2) with an `AnyValue` string (1).
fn attr_str(b: &mut Vec<u8>, field: u32, k: &str, v: &str) {
    nested(b, field, |b| {
        string(b, 1, k);
        nested(b, 2, |b| string(b, 1, v));
    });
}

/// A `KeyValue` with an `AnyValue` int (3, int64 as a varint).
fn attr_int(b: &mut Vec<u8>, field: u32, k: &str, v: i64) {
    nested(b, field, |b| {
        string(b, 1, k);
        nested(b, 2, |b| varint_field(b, 3, v as u64));
    });
}

/// Spans the collector refused, from an `ExportTraceServiceResponse` (its `partial_success`
/// = 1, whose `rejected_spans` = 1); 0 when it says nothing, or cannot be read.
pub fn rejected_spans(body: &[u8]) -> u64 {
    let Some(partial) = find_len(body, 1) else {
        return 0;
    };
    let mut r = Reader(partial);
    while let Some((field, wire)) = r.key() {
        match (field, wire) {
            (1, VARINT) => return r.varint().unwrap_or(0),
            _ => {
                if r.skip(wire).is_none() {
                    return 0;
                }
            }
        }
    }
    0
}

fn find_len(body: &[u8], want: u32) -> Option<&[u8]> {
    let mut r = Reader(body);
    while let Some((field, wire)) = r.key() {
        if field == want && wire == LEN {
            return r.len_delimited();
        }
        r.skip(wire)?;
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u32, u8)> {
        if self.0.is_empty() {
            return None;
        }
        let k = self.varint()?;
        Some(((k >> 3) as u32, (k & 7) as u8))
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(v)
    }

    fn skip(&mut self, wire: u8) -> Option<()> {
        let n = match wire {
            VARINT => return self.varint().map(|_| ()),
            I64 => 8,
            LEN => return self.len_delimited().map(|_| ()),
            I32 => 4,
            _ => return None,
        };
        self.0 = self.0.get(n..)?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let enc = |v| {
            let mut b = Vec::new();
            varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(128), [0x80, 1]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        // A negative int64 is ten bytes, as protobuf writes it.
        assert_eq!(enc(-1i64 as u64).len(), 10);
    }

    #[test]
    fn nested_messages_get_their_exact_length() {
        for n in [0usize, 1, 127, 128, 300, 20_000] {
            let mut b = Vec::new();
            nested(&mut b, 2, |b| b.extend(std::iter::repeat_n(7u8, n)));
            let mut r = Reader(&b);
            assert_eq!(r.key(), Some((2, LEN)));
            let inner = r.len_delimited().unwrap();
            assert_eq!(inner.len(), n);
            assert!(r.0.is_empty());
        }
    }

    #[test]
    fn a_partial_success_says_how_many_spans_were_rejected() {
        // partial_success { rejected_spans: 3, error_message: "x" }
        let mut inner = Vec::new();
        varint_field(&mut inner, 1, 3);
        string(&mut inner, 2, "x");
        let mut body = Vec::new();
        bytes(&mut body, 1, &inner);
        assert_eq!(rejected_spans(&body), 3);
        assert_eq!(rejected_spans(&[]), 0);
        assert_eq!(rejected_spans(&[0x0a, 0x05, 0x08]), 0);
    }

    #[test]
    fn hosts_split_into_address_and_port() {
        assert_eq!(split_host(b"shop:8080"), Some(("shop", Some(8080))));
        assert_eq!(split_host(b"shop"), Some(("shop", None)));
        assert_eq!(split_host(b"[::1]:80"), Some(("::1", Some(80))));
        assert_eq!(
            method_name(&Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
    }
}
