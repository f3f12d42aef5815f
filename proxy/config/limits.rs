//! Per-listener `limits:`: what one client may cost the proxy (header size and count, how long
//! it may take to send a request head or body, connections, HTTP/2 streams and windows) and how
//! strictly header names are taken. The YAML shape, the validated model and the validation
//! live together; defaults follow Envoy's edge-proxy guidance (and Kestrel's for the body rate).

use std::time::Duration;

use serde::Deserialize;

use super::duration::{DurationStr, positive as duration};
use super::errors::Errors;

pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 60 * 1024;
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's edge `idle_timeout`: an HTTP/2 connection with no stream open for this long closes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_MIN_BODY_RATE: u64 = 240;
pub const DEFAULT_MIN_BODY_RATE_GRACE: Duration = Duration::from_secs(5);
/// Envoy's edge overload manager: 50,000 downstream connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Envoy's edge values: 64 KiB per stream, 1 MiB per connection.
pub const DEFAULT_STREAM_WINDOW: u32 = 64 * 1024;
pub const DEFAULT_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a client may reset before the server has accepted them (rapid reset, CVE-2023-44487).
pub const DEFAULT_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it closes the connection.
pub const DEFAULT_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// hyper needs a read buffer of at least 8 KiB.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1024 * 1024;
const MAX_HEADERS: usize = 10_000;
/// HTTP/2's own ceiling for a window (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

// ----- as written -----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_request_header_bytes: Option<usize>,
    pub max_request_headers: Option<usize>,
    pub header_read_timeout: Option<DurationStr>,
    pub idle_timeout: Option<DurationStr>,
    pub min_request_body_rate: Option<BodyRateFile>,
    pub max_connections: Option<usize>,
    pub max_request_body_bytes: Option<u64>,
    pub headers_with_underscores: Option<Underscores>,
    pub http2: Option<Http2File>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyRateFile {
    /// 0 turns the check off.
    pub bytes_per_second: Option<u64>,
    pub grace: Option<DurationStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2File {
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window_bytes: Option<u32>,
    pub initial_connection_window_bytes: Option<u32>,
    pub max_header_list_bytes: Option<u32>,
    pub max_pending_accept_reset_streams: Option<usize>,
    pub max_local_error_reset_streams: Option<usize>,
}

// ----- validated -----

/// What to do with a request header whose name has an underscore (`x_user` can be read as
/// `x-user` by CGI-style backends, which lets a client spoof a header the proxy sets or checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Underscores {
    Allow,
    /// Envoy's default: the header is removed, the request goes on.
    #[default]
    Drop,
    /// 400.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    pub bytes_per_second: u64,
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    pub max_header_list_bytes: u32,
    pub max_pending_accept_reset_streams: usize,
    pub max_local_error_reset_streams: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    /// From a connection's start or its previous response's end to a whole request head.
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub min_request_body_rate: Option<BodyRate>,
    pub max_connections: usize,
    pub max_request_body_bytes: Option<u64>,
    pub headers_with_underscores: Underscores,
    pub http2: Http2Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: DEFAULT_MAX_REQUEST_HEADER_BYTES,
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            min_request_body_rate: Some(BodyRate {
                bytes_per_second: DEFAULT_MIN_BODY_RATE,
                grace: DEFAULT_MIN_BODY_RATE_GRACE,
            }),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request_body_bytes: None,
            headers_with_underscores: Underscores::Drop,
            http2: Http2Limits {
                max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
                initial_stream_window_bytes: DEFAULT_STREAM_WINDOW,
                initial_connection_window_bytes: DEFAULT_CONNECTION_WINDOW,
                max_header_list_bytes: DEFAULT_MAX_REQUEST_HEADER_BYTES as u32,
                max_pending_accept_reset_streams: DEFAULT_MAX_PENDING_ACCEPT_RESETS,
                max_local_error_reset_streams: DEFAULT_MAX_LOCAL_ERROR_RESETS,
            },
        }
    }
}

// ----- validation -----

fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    value: Option<T>,
    default: T,
    (lo, hi): (T, T),
    path: &str,
    key: &str,
    errs: &mut Errors,
) -> T {
    match value {
        Some(v) if v < lo || v > hi => {
            errs.push(
                format!("{path}.{key}"),
                format!("{v} is out of range; use {lo} to {hi}"),
            );
            default
        }
        Some(v) => v,
        None => default,
    }
}

/// `path` is the listener's (`listeners[0]`); errors are reported under `{path}.limits`.
pub(super) fn limits(path: &str, f: Option<&LimitsFile>, errs: &mut Errors) -> Limits {
    let d = Limits::default();
    let Some(f) = f else { return d };
    let path = format!("{path}.limits");
    let p = path.as_str();
    let max_request_header_bytes = in_range(
        f.max_request_header_bytes,
        d.max_request_header_bytes,
        (MIN_HEADER_BYTES, MAX_HEADER_BYTES),
        p,
        "max_request_header_bytes",
        errs,
    );
    let max_request_headers = in_range(
        f.max_request_headers,
        d.max_request_headers,
        (1, MAX_HEADERS),
        p,
        "max_request_headers",
        errs,
    );
    let max_connections = in_range(
        f.max_connections,
        d.max_connections,
        (1, 10_000_000),
        p,
        "max_connections",
        errs,
    );
    if f.max_request_body_bytes == Some(0) {
        errs.push(
            format!("{p}.max_request_body_bytes"),
            "must be more than 0; leave it out for no limit",
        );
    }
    let min_request_body_rate = match &f.min_request_body_rate {
        None => d.min_request_body_rate,
        Some(r) if r.bytes_per_second == Some(0) => None,
        Some(r) => Some(BodyRate {
            bytes_per_second: r.bytes_per_second.unwrap_or(DEFAULT_MIN_BODY_RATE),
            grace: duration(
                r.grace,
                DEFAULT_MIN_BODY_RATE_GRACE,
                &format!("{p}.min_request_body_rate"),
                "grace",
                errs,
            ),
        }),
    };
    let h = f.http2.as_ref();
    let hp = format!("{p}.http2");
    let http2 = Http2Limits {
        max_concurrent_streams: in_range(
            h.and_then(|h| h.max_concurrent_streams),
            d.http2.max_concurrent_streams,
            (1, 100_000),
            &hp,
            "max_concurrent_streams",
            errs,
        ),
        // Below 64 KiB - 1 (the protocol's initial window) a peer could not even send that.
        initial_stream_window_bytes: in_range(
            h.and_then(|h| h.initial_stream_window_bytes),
            d.http2.initial_stream_window_bytes,
            (65_535, MAX_WINDOW),
            &hp,
            "initial_stream_window_bytes",
            errs,
        ),
        initial_connection_window_bytes: in_range(
            h.and_then(|h| h.initial_connection_window_bytes),
            d.http2.initial_connection_window_bytes,
            (65_535, MAX_WINDOW),
            &hp,
            "initial_connection_window_bytes",
            errs,
        ),
        max_header_list_bytes: in_range(
            h.and_then(|h| h.max_header_list_bytes),
            max_request_header_bytes as u32,
            (MIN_HEADER_BYTES as u32, MAX_HEADER_BYTES as u32),
            &hp,
            "max_header_list_bytes",
            errs,
        ),
        max_pending_accept_reset_streams: in_range(
            h.and_then(|h| h.max_pending_accept_reset_streams),
            d.http2.max_pending_accept_reset_streams,
            (1, 100_000),
            &hp,
            "max_pending_accept_reset_streams",
            errs,
        ),
        max_local_error_reset_streams: in_range(
            h.and_then(|h| h.max_local_error_reset_streams),
            d.http2.max_local_error_reset_streams,
            (1, 100_000),
            &hp,
            "max_local_error_reset_streams",
            errs,
        ),
    };
    Limits {
        max_request_header_bytes,
        max_request_headers,
        header_read_timeout: duration(
            f.header_read_timeout,
            d.header_read_timeout,
            p,
            "header_read_timeout",
            errs,
        ),
        idle_timeout: duration(f.idle_timeout, d.idle_timeout, p, "idle_timeout", errs),
        min_request_body_rate,
        max_connections,
        max_request_body_bytes: f.max_request_body_bytes.filter(|&n| n > 0),
        headers_with_underscores: f.headers_with_underscores.unwrap_or_default(),
        http2,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    use super::*;

    fn with(limits: &str) -> Result<Limits, Vec<crate::config::ConfigError>> {
        let text = format!(
            "listeners: [{{ bind: \"127.0.0.1:0\", limits: {limits} }}]\nupstreams: {{ a: {{ backends: [\"127.0.0.1:1\"] }} }}\nroutes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}] }}]\n"
        );
        parse_str(&text)
            .map(|c| c.listeners[0].limits)
            .map_err(|e| e.0)
    }

    #[test]
    fn defaults_follow_the_edge_guidance() {
        let l = with("{}").unwrap();
        assert_eq!(l, Limits::default());
        assert_eq!(l.max_request_header_bytes, 61_440);
        assert_eq!(l.max_request_headers, 100);
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.http2.max_concurrent_streams, 100);
        assert_eq!(l.headers_with_underscores, Underscores::Drop);
        assert_eq!(
            l.min_request_body_rate,
            Some(BodyRate {
                bytes_per_second: 240,
                grace: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn settings_are_read_and_a_zero_rate_turns_the_check_off() {
        let l = with(
            "{ max_request_header_bytes: 16384, header_read_timeout: 2s, max_request_body_bytes: 10, min_request_body_rate: { bytes_per_second: 0 }, headers_with_underscores: reject, http2: { max_concurrent_streams: 10 } }",
        )
        .unwrap();
        assert_eq!(l.max_request_header_bytes, 16_384);
        assert_eq!(l.http2.max_header_list_bytes, 16_384);
        assert_eq!(l.header_read_timeout, Duration::from_secs(2));
        assert_eq!(l.max_request_body_bytes, Some(10));
        assert_eq!(l.min_request_body_rate, None);
        assert_eq!(l.headers_with_underscores, Underscores::Reject);
        assert_eq!(l.http2.max_concurrent_streams, 10);
    }

    #[test]
    fn every_bad_limit_is_reported_with_its_path() {
        let errs = with(
            "{ max_request_header_bytes: 100, max_request_headers: 0, max_request_body_bytes: 0, header_read_timeout: 0s, http2: { initial_stream_window_bytes: 1 } }",
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].limits.max_request_header_bytes",
                "listeners[0].limits.max_request_headers",
                "listeners[0].limits.max_request_body_bytes",
                "listeners[0].limits.http2.initial_stream_window_bytes",
                "listeners[0].limits.header_read_timeout",
            ],
            "{errs:#?}"
        );
    }
}
