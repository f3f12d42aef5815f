//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and `tracestate`
//! request headers, parsed strictly and written in version `00`. Pure functions over bytes.
//!
//! A `traceparent` that is not exactly right is ignored as a whole and the trace restarts: wrong
//! length, upper-case or non-hex digits, an all-zero trace or parent id, version `ff`, a version
//! `00` value with anything after its flags, or more than one `traceparent` header. A higher
//! version is read as far as version `00` defines it (the spec's rule for future versions): its
//! ids and the sampled bit are used, and whatever follows a dash after the flags is ignored.
//!
//! `tracestate` is read only when `traceparent` was valid. Its list members are checked against
//! the spec's grammar (keys, values, at most 32 members, each key once); when any is wrong the
//! whole `tracestate` is dropped, since a half-kept list would say something its owners never
//! wrote. Several `tracestate` fields are one list, joined in order.

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The sampled bit of `trace-flags`, the one flag version `00` defines.
pub(crate) const SAMPLED: u8 = 0x01;

/// Length of a version `00` `traceparent`: `vv-` 32 hex `-` 16 hex `-ff`.
const TRACEPARENT_LEN: usize = 55;

/// At most this many list members in a `tracestate` (the spec's limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A trace's 16-byte id; never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub(crate) [u8; 16]);

/// A span's 8-byte id; never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub(crate) [u8; 8]);

impl TraceId {
    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex, as `traceparent` and most log formats carry it.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }
}

impl SpanId {
    pub fn bytes(&self) -> &[u8; 8] {
        &self.0
    }

    pub fn hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// What a valid `traceparent` says: the trace, the caller's span, and whether the caller
/// sampled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// The request's `traceparent`, if there is exactly one and it is valid.
pub fn parent(headers: &HeaderMap) -> Option<Parent> {
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    parse_traceparent(first.as_bytes())
}

/// Parses one `traceparent` value (see the module docs for what is refused).
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let v = value.trim_ascii();
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(v[0], v[1])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // Version 00 is exactly 55 bytes; a later version may add fields, each after a dash.
    let rest_ok = match version {
        0 => v.len() == TRACEPARENT_LEN,
        _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
    };
    if !rest_ok {
        return None;
    }
    let mut trace_id = [0; 16];
    let mut span_id = [0; 8];
    unhex_into(&v[3..35], &mut trace_id)?;
    unhex_into(&v[36..52], &mut span_id)?;
    let flags = hex_byte(v[53], v[54])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        sampled: flags & SAMPLED != 0,
    })
}

/// `00-{trace}-{span}-{flags}`: the only flag written is `sampled` (version `00` defines no
/// other, and says the rest must be zero).
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    hex_into(&trace_id.0, &mut out[3..35]);
    out[35] = b'-';
    hex_into(&span_id.0, &mut out[36..52]);
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    // Lower-case hex and dashes are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `tracestate` to pass on: the request's, checked, as one field; `None` when it has none,
/// only empty members, or any member that breaks the grammar.
pub fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut fields = headers.get_all(&TRACESTATE).iter();
    let first = fields.next()?;
    let Some(second) = fields.next() else {
        // The common case: one field, passed on as it came when it is valid and not empty.
        return match check_tracestate(&[first.as_bytes()]) {
            Some(0) | None => None,
            Some(_) => Some(first.clone()),
        };
    };
    let all: Vec<&[u8]> = [first, second]
        .into_iter()
        .chain(fields)
        .map(HeaderValue::as_bytes)
        .collect();
    if check_tracestate(&all)? == 0 {
        return None;
    }
    // Joined without the empty members, which the spec allows a sender to leave out.
    let mut joined = Vec::new();
    for member in all
        .iter()
        .flat_map(|f| f.split(|&b| b == b','))
        .map(|m| m.trim_ascii())
        .filter(|m| !m.is_empty())
    {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(member);
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Leaves the request's `tracestate` as [`tracestate`] says to pass it on, touching the
/// headers only when that differs from what came (several fields, or an invalid list).
pub fn settle_tracestate(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(&TRACESTATE).iter();
    let keep_as_is = match (fields.next(), fields.next()) {
        (None, _) => return,
        (Some(one), None) => matches!(check_tracestate(&[one.as_bytes()]), Some(n) if n > 0),
        (Some(_), Some(_)) => false,
    };
    if keep_as_is {
        return;
    }
    match tracestate(headers) {
        Some(v) => {
            headers.insert(&TRACESTATE, v);
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// The number of non-empty list members across `fields` (one list), or `None` if any member
/// is invalid, a key repeats, or there are more than 32.
fn check_tracestate(fields: &[&[u8]]) -> Option<usize> {
    let mut keys: Vec<&[u8]> = Vec::new();
    for member in fields.iter().flat_map(|f| f.split(|&b| b == b',')) {
        // Spaces and tabs around a member are optional whitespace; a member may be empty.
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        let eq = member.iter().position(|&b| b == b'=')?;
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !valid_key(key) || !valid_value(value) || keys.contains(&key) {
            return None;
        }
        keys.push(key);
        if keys.len() > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    Some(keys.len())
}

/// `simple-key` (up to 256) or `tenant@system` (up to 241 and 14), lower-case letters, digits
/// and `_-*/`, each part starting with a letter or digit (a system id with a letter).
fn valid_key(key: &[u8]) -> bool {
    let keychar = |b: &u8| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
    };
    let starts_ok = |s: &[u8]| {
        s.first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match key.iter().position(|&b| b == b'@') {
        None => key.len() <= 256 && starts_ok(key) && key.iter().all(keychar),
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            tenant.len() <= 241
                && starts_ok(tenant)
                && tenant.iter().all(keychar)
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(keychar)
        }
    }
}

/// 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space (the member was
/// trimmed, so a trailing space is already gone).
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

/// Every byte's two lower-case hex digits: one lookup per byte on the request path.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    t
};

/// `bytes` as lower-case hex into `out` (twice as long), most significant digit first.
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Lower-case hex only: the spec's HEXDIGLC.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

fn unhex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
