//! An [`Entry`] as one line of JSON. Pure: appends to a buffer the writer reuses. Every string
//! is escaped byte by byte, so nothing a client sends (quotes, backslashes, control characters,
//! newlines, invalid UTF-8) can end the line or the string early: invalid UTF-8 becomes U+FFFD.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use super::entry::Entry;

/// Appends `e` as one JSON object and a newline to `out`.
pub(crate) fn line(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_ms(out, e.time);
    out.extend_from_slice(b"\",\"listener\":");
    string(out, e.listener.as_bytes());
    out.extend_from_slice(b",\"client\":\"");
    socket_addr(out, e.client);
    out.extend_from_slice(b"\",\"method\":");
    string(out, e.method.as_str().as_bytes());
    out.extend_from_slice(b",\"authority\":");
    opt_string(out, e.sent.authority());
    out.extend_from_slice(b",\"path\":");
    string(out, e.sent.path());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(e.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    uint(out, u64::from(e.status));
    out.extend_from_slice(b",\"route\":");
    opt_string(out, e.route.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"upstream\":");
    opt_string(out, e.upstream.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"backend\":");
    opt_string(out, e.backend.as_ref().map(|b| b.as_str().as_bytes()));
    out.extend_from_slice(b",\"attempts\":");
    uint(out, u64::from(e.attempts));
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, e.duration);
    out.extend_from_slice(b",\"upstream_ms\":");
    match e.upstream_time {
        Some(t) => millis(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_received\":");
    match e.bytes_received {
        Some(n) => uint(out, n),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_sent\":");
    uint(out, e.bytes_sent);
    out.extend_from_slice(b",\"request_id\":");
    string(out, e.sent.request_id());
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

/// `n` in decimal. By hand rather than through `core::fmt`, which costs several times more
/// per number and the writer formats a dozen numbers a line; two digits per division.
fn uint(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[(n % 100) as usize]);
        n /= 100;
    }
    if n >= 10 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[n as usize]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// `00` to `99`.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// `n` as exactly `width` digits (zero-padded; `n` must fit).
fn padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 4];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// `1.2.3.4:5` or `[::1]:5`.
fn socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint(out, u64::from(o));
            }
            out.push(b':');
            uint(out, u64::from(v4.port()));
        }
        // IPv6's shortest form (RFC 5952) is the standard library's to get right.
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    uint(out, us / 1000);
    out.push(b'.');
    padded(out, us % 1000, 3);
}

fn opt_string(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Bytes that cannot stand for themselves inside a JSON string: control characters, `"`, `\`
/// and DEL (legal, but a terminal's trouble).
const ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// `s` as a JSON string, quotes included.
pub(crate) fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if is_plain(s) {
        out.extend_from_slice(s);
    } else {
        for chunk in s.utf8_chunks() {
            escape(out, chunk.valid().as_bytes());
            if !chunk.invalid().is_empty() {
                out.extend_from_slice(b"\\ufffd");
            }
        }
    }
    out.push(b'"');
}

/// Whether `s` is ASCII without any of [`ESCAPE`]'s bytes, so that it stands for itself: most
/// strings are, and one pass over eight bytes at a time says so (the last few are padded with
/// spaces, which are plain).
fn is_plain(s: &[u8]) -> bool {
    let mut words = s.chunks_exact(8);
    let plain = words
        .by_ref()
        .all(|w| <[u8; 8]>::try_from(w).is_ok_and(|w| is_plain_word(u64::from_le_bytes(w))));
    let rest = words.remainder();
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    plain && is_plain_word(u64::from_le_bytes(last))
}

/// Valid UTF-8 `s` with [`ESCAPE`]'s bytes escaped; runs of other bytes are copied whole.
fn escape(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        if !ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&s[run..i]);
        run = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&s[run..]);
}

/// Whether none of the eight bytes in `w` is one of [`ESCAPE`]'s or above ASCII (exact as a yes
/// or no; the classic has-zero-byte and has-byte-less-than tricks).
fn is_plain_word(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let equal = |c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    below_space | equal(b'"') | equal(b'\\') | equal(0x7f) | (w & HIGH) == 0
}

/// `2026-12-02T02:00:51.123Z`.
fn rfc3339_ms(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    // Years past 9999 are not RFC 3339; clamp rather than write five digits.
    padded(out, y.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    padded(out, u64::from(m), 2);
    out.push(b'-');
    padded(out, u64::from(d), 2);
    out.push(b'T');
    padded(out, rem / 3600, 2);
    out.push(b':');
    padded(out, rem / 60 % 60, 2);
    out.push(b':');
    padded(out, rem % 60, 2);
    out.push(b'.');
    padded(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
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
    use crate::accesslog::entry::{FlagSet, Sent};
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
    fn numbers_and_addresses_as_core_fmt_writes_them() {
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        for n in [0, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            assert_eq!(with(&|o| uint(o, n)), n.to_string());
        }
        for us in [0, 1, 999, 1000, 12_345, 86_400_000_001] {
            let d = Duration::from_micros(us);
            assert_eq!(
                with(&|o| millis(o, d)),
                format!("{}.{:03}", us / 1000, us % 1000)
            );
        }
        for a in [
            "127.0.0.1:5000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:80",
            "[2001:db8::1%3]:443",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(with(&|o| socket_addr(o, a)), a.to_string());
        }
    }

    #[test]
    fn escaping_finds_every_byte_at_every_place_in_long_strings() {
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut raw = b"abcdefghijklmnopqrst".to_vec();
                raw[at] = b;
                let out = escaped(&raw);
                let back: String = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("byte {b:#x} at {at}: {out}: {e}"));
                let want = String::from_utf8_lossy(&raw);
                assert_eq!(back, want, "byte {b:#x} at {at}");
                let plain = b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f;
                assert_eq!(
                    out.len() == raw.len() + 2,
                    plain && b < 0x80,
                    "byte {b:#x} at {at}: {out}"
                );
            }
        }
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
            sent: Sent::new(b"/a?b=%22c{}", Some(b"ex\tample\"\xff"), b"abc"),
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
