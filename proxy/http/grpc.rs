//! gRPC as the proxy sees it: a status in `grpc-status` (in trailers, or in the head of a
//! trailers-only response), the `grpc-timeout` a client asks for, and the status switchyard's
//! own answers carry. Which statuses mean the backend failed is the upstream's to say
//! ([`crate::config::model::GrpcCodes`]). Pure functions.

use std::time::Duration;

use http::HeaderMap;

const UNKNOWN: u8 = 2;
const DEADLINE_EXCEEDED: u8 = 4;
const RESOURCE_EXHAUSTED: u8 = 8;
const UNIMPLEMENTED: u8 = 12;
const INTERNAL: u8 = 13;
pub(crate) const UNAVAILABLE: u8 = 14;

pub(crate) use crate::backend::h2req::is_grpc;

/// `grpc-status` in `h`; a value that is not a status is UNKNOWN (as gRPC clients read it).
pub(crate) fn status(h: &HeaderMap) -> Option<u8> {
    let v = h.get("grpc-status")?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .filter(|c| *c <= 16)
            .unwrap_or(UNKNOWN),
    )
}

/// What a gRPC response has said so far about its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcEnd {
    /// Not a gRPC response.
    NotGrpc,
    /// A gRPC response whose status has not arrived yet (it comes in the trailers).
    Pending,
    /// The status, from the trailers or a trailers-only head.
    Status(u8),
}

impl GrpcEnd {
    /// What a response head says.
    pub(crate) fn of_head(h: &HeaderMap) -> GrpcEnd {
        if !is_grpc(h) {
            return GrpcEnd::NotGrpc;
        }
        status(h).map_or(GrpcEnd::Pending, GrpcEnd::Status)
    }

    /// The trailers arrived.
    pub(crate) fn trailers(&mut self, t: &HeaderMap) {
        if *self == GrpcEnd::Pending
            && let Some(c) = status(t)
        {
            *self = GrpcEnd::Status(c);
        }
    }
}

/// `grpc-timeout` (`1S`, `250m`, `100u`...: at most 8 digits and a unit), as a duration.
pub(crate) fn timeout(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for an answer switchyard gives with HTTP `status` (gRPC's HTTP-to-gRPC
/// mapping; a timeout is DEADLINE_EXCEEDED, a body too large RESOURCE_EXHAUSTED).
pub(crate) fn code_for(status: u16, timed_out: bool) -> u8 {
    if timed_out {
        return DEADLINE_EXCEEDED;
    }
    match status {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => UNIMPLEMENTED,
        413 => RESOURCE_EXHAUSTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII (and `%` itself), as the gRPC
/// HTTP/2 spec asks.
pub(crate) fn message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_status_comes_from_the_head_or_the_trailers() {
        let plain = head(&[("content-type", "application/json")]);
        assert_eq!(GrpcEnd::of_head(&plain), GrpcEnd::NotGrpc);
        let only = head(&[("content-type", "application/grpc"), ("grpc-status", "14")]);
        assert_eq!(GrpcEnd::of_head(&only), GrpcEnd::Status(14));
        let mut streaming = GrpcEnd::of_head(&head(&[("content-type", "application/grpc+proto")]));
        assert_eq!(streaming, GrpcEnd::Pending);
        streaming.trailers(&head(&[("grpc-status", "5")]));
        assert_eq!(streaming, GrpcEnd::Status(5));
        assert_eq!(status(&head(&[("grpc-status", "nonsense")])), Some(UNKNOWN));
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let t = |v: &'static str| timeout(&head(&[("grpc-timeout", v)]));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("123456789S"), None, "more than 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("S"), None);
    }

    #[test]
    fn local_answers_map_to_grpc_statuses() {
        assert_eq!(code_for(504, true), DEADLINE_EXCEEDED);
        assert_eq!(code_for(503, false), UNAVAILABLE);
        assert_eq!(code_for(502, false), UNAVAILABLE);
        assert_eq!(code_for(429, false), UNAVAILABLE);
        assert_eq!(code_for(404, false), UNIMPLEMENTED);
        assert_eq!(message("no backend: 100%\n"), "no backend: 100%25");
    }
}
