//! OTLP/HTTP's protobuf body for traces (`ExportTraceServiceRequest`), written by hand: the
//! handful of messages a batch of spans needs (opentelemetry-proto's `trace.proto`,
//! `common.proto`, `resource.proto`), each field with its number from those files. Pure: bytes
//! in, bytes out; the receiver test decodes the result with the official Python package.
//!
//! Attribute names follow OpenTelemetry's HTTP semantic conventions (server and client spans);
//! switchyard's own are under `switchyard.`.

use http::{Method, Version};

use super::span::{ClientSpan, RequestSpans, ServerSpan};

/// Who sends the spans: the `resource` of every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub service_name: String,
    /// `service.instance.id`: which replica (the host name, when known).
    pub instance: Option<String>,
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
pub fn encode<'a>(
    resource: &Resource,
    batch: impl IntoIterator<Item = &'a RequestSpans>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
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
                nested(b, 2, |b| server_span(b, &req.server, req.tries.len()));
                for t in &req.tries {
                    nested(b, 2, |b| client_span(b, &req.server, t));
                }
            }
        });
    });
    out
}

fn server_span(b: &mut Vec<u8>, s: &ServerSpan, tries: usize) {
    common(b, s, s.span_id.bytes(), s.parent.as_ref().map(|p| &p.0[..]));
    let remote = if s.parent.is_some() {
        FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE
    } else {
        FLAG_HAS_IS_REMOTE
    };
    fixed32(b, 16, u32::from(s.sampled) | remote);
    // `{method} {route}`: the route is switchyard's low-cardinality name for what matched.
    let name = match &s.route {
        Some(r) => format!("{} {r}", method_name(&s.method)),
        None => method_name(&s.method).to_owned(),
    };
    string(b, 5, &name);
    varint_field(b, 6, KIND_SERVER);
    fixed64(b, 7, s.start_ns);
    fixed64(b, 8, s.end_ns.max(s.start_ns));
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
    let peer = s.peer.ip().to_canonical().to_string();
    attr_str(b, 9, "client.address", &peer);
    attr_str(b, 9, "network.peer.address", &peer);
    attr_int(b, 9, "network.peer.port", i64::from(s.peer.port()));
    if let Some(ua) = s.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
        attr_str(b, 9, "user_agent.original", ua);
    }
    attr_int(b, 9, "http.response.status_code", i64::from(s.status));
    let failed = s.status >= 500;
    if failed {
        let status = s.status.to_string();
        attr_str(b, 9, "error.type", s.error.unwrap_or(&status));
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
    if failed {
        status(b, s.error.unwrap_or(""));
    }
}

fn client_span(b: &mut Vec<u8>, s: &ServerSpan, t: &ClientSpan) {
    common(b, s, t.span_id.bytes(), Some(&s.span_id.0[..]));
    fixed32(b, 16, u32::from(s.sampled) | FLAG_HAS_IS_REMOTE);
    string(b, 5, method_name(&s.method));
    varint_field(b, 6, KIND_CLIENT);
    fixed64(b, 7, t.start_ns);
    fixed64(b, 8, t.end_ns.max(t.start_ns));
    method_attrs(b, &s.method);
    let authority = &t.backend.authority;
    let scheme = if t.tls { "https" } else { "http" };
    attr_str(
        b,
        9,
        "url.full",
        &format!("{scheme}://{}{}", authority.as_str(), s.uri.path()),
    );
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
    attr_str(b, 9, "network.protocol.version", "1.1");
    if let Some(code) = t.status {
        attr_int(b, 9, "http.response.status_code", i64::from(code));
    }
    if t.resend > 0 {
        attr_int(b, 9, "http.request.resend_count", i64::from(t.resend));
    }
    let error = match (t.error, t.status) {
        (Some(e), _) => Some(e.to_owned()),
        (None, Some(code)) if code >= 400 => Some(code.to_string()),
        _ => None,
    };
    if let Some(e) = &error {
        attr_str(b, 9, "error.type", e);
    }
    attr_str(b, 9, "switchyard.upstream", &t.upstream);
    attr_str(b, 9, "switchyard.backend", authority.as_str());
    if let Some(e) = &error {
        status(b, e);
    }
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

pub(super) fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
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

/// A length-delimited message written in place: a one-byte length is reserved and widened
/// afterwards if the message turned out longer (spans are a few hundred bytes, so this moves
/// little).
fn nested(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(b, field, LEN);
    let at = b.len();
    b.push(0);
    f(b);
    let len = b.len() - at - 1;
    if len < 0x80 {
        b[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len as u64);
        b.splice(at..=at, prefix);
    }
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
