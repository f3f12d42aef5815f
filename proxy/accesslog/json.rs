//! An [`Entry`] as one line of JSON. Pure: appends to a buffer the writer reuses. Every string
//! is escaped byte by byte, so nothing a client sends (quotes, backslashes, control characters,
//! newlines, invalid UTF-8) can end the line or the string early: invalid UTF-8 becomes U+FFFD.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use super::entry::Entry;

/// Appends `e` as one JSON object and a newline to `out`.
pub(crate) fn line(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_ms(out, e.time);
    out.extend_from_slice(b"\",\"listener\":");
    string(out, e.listener.as_bytes());
    // Writes into a Vec cannot fail.
    let _ = write!(out, ",\"client\":\"{}\",\"method\":", e.client);
    string(out, e.method.as_str().as_bytes());
    out.extend_from_slice(b",\"authority\":");
    opt_string(out, e.authority());
    out.extend_from_slice(b",\"path\":");
    let path = e.uri.path_and_query().map_or("/", |p| p.as_str());
    string(out, path.as_bytes());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(e.version).as_bytes());
    let _ = write!(out, "\",\"status\":{},\"route\":", e.status);
    opt_string(out, e.route.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"upstream\":");
    opt_string(out, e.upstream.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"backend\":");
    opt_string(out, e.backend.as_ref().map(|b| b.as_str().as_bytes()));
    let _ = write!(out, ",\"attempts\":{},\"duration_ms\":", e.attempts);
    millis(out, e.duration);
    out.extend_from_slice(b",\"upstream_ms\":");
    match e.upstream_time {
        Some(t) => millis(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_received\":");
    match e.bytes_received {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"bytes_sent\":{},\"request_id\":", e.bytes_sent);
    string(out, e.request_id.as_bytes());
    match e.trace {
        Some(t) => {
            out.extend_from_slice(b",\"trace_id\":\"");
            out.extend_from_slice(&t.trace_id.hex());
            out.extend_from_slice(b"\",\"span_id\":\"");
            out.extend_from_slice(&t.span_id.hex());
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"trace_id\":null,\"span_id\":null"),
    }
    out.extend_from_slice(b",\"flags\":[");
    for (i, name) in e.flags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, name.as_bytes());
    }
    out.extend_from_slice(b"]}\n");
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

fn opt_string(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string, quotes included.
pub(crate) fn string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..0x20 | 0x7f => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
    out.push(b'"');
}

/// `2026-12-02T02:00:51.123Z`.
fn rfc3339_ms(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accesslog::entry::FlagSet;
    use http::header::HeaderValue;
    use std::sync::Arc;

    fn escaped(s: &[u8]) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).expect("escaped output is UTF-8")
    }

    #[test]
    fn every_byte_stays_inside_its_string() {
        for b in 0..=255u8 {
            let raw = [b'a', b, b'"', b'\\', b'\n', 0xff, b'z'];
            let out = escaped(&raw);
            let back: String = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("byte {b:#x}: {out} is not a JSON string: {e}"));
            assert!(
                back.starts_with('a') && back.ends_with("\"\\\n\u{fffd}z"),
                "{b:#x}: {back:?}"
            );
            assert!(!out.contains('\n'));
        }
        assert_eq!(escaped("héllo ✓".as_bytes()), "\"héllo ✓\"");
        assert_eq!(escaped(b"\x01\x7f"), "\"\\u0001\\u007f\"");
        assert_eq!(escaped(b"\xe2\x9c"), "\"\\ufffd\"");
    }

    #[test]
    fn dates() {
        let at = |s: u64, ms: u64| {
            let mut out = Vec::new();
            rfc3339_ms(&mut out, UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_176_851, 123), "2026-12-02T02:00:51.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_line_is_one_json_object() {
        let e = Entry {
            time: UNIX_EPOCH,
            listener: Arc::from("public"),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: http::Method::GET,
            version: Version::HTTP_11,
            uri: "/a?b=%22c{}".parse().unwrap(),
            host: Some(HeaderValue::from_bytes(b"ex\tample\"\xff").unwrap()),
            request_id: HeaderValue::from_static("abc"),
            trace: None,
            bytes_received: Some(0),
            status: 503,
            route: Some(Arc::from("r")),
            upstream: None,
            backend: Some("127.0.0.1:9".parse().unwrap()),
            attempts: 2,
            duration: Duration::from_micros(12_345),
            upstream_time: None,
            bytes_sent: 10,
            flags: FlagSet {
                bits: 0b101,
                names: &["UF", "UT", "UH"],
            },
        };
        let mut out = Vec::new();
        line(&mut out, &e);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["authority"], "ex\tample\"\u{fffd}");
        assert_eq!(v["path"], "/a?b=%22c{}");
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert_eq!(v["flags"], serde_json::json!(["UF", "UH"]));
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 503);
    }
}
