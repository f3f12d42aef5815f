//! Config for shaping a route's traffic at the edge: `rate_limit` (token buckets) and `fault`
//! (injected delays and aborts, to rehearse failures). The YAML shape, the validated model and
//! the validation live together here.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::duration::DurationStr;
use super::errors::Errors;

// ----- as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
    /// `route` (default), `client_ip` or `header:<name>`.
    pub key: Option<String>,
    pub max_keys: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    pub delay: Option<DelayFile>,
    pub abort: Option<AbortFile>,
    pub upstream: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayFile {
    pub percent: f64,
    pub duration: DurationStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFile {
    pub percent: f64,
    pub status: u16,
}

// ----- validated -----

/// Default bound on the buckets one per-key limiter keeps (about 16 bytes each).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
const MAX_MAX_KEYS: usize = 10_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// Requests let through at once from a full bucket.
    pub burst: u32,
    pub key: RateKey,
    /// Per-key limiters keep at most this many buckets.
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// One bucket for the whole route.
    Route,
    /// One bucket per client address (the TCP peer, not `X-Forwarded-For`, which clients write).
    ClientIp,
    /// One bucket per value of this header; requests without it share one bucket.
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// Only requests the split sent to this upstream are faulted.
    pub upstream: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub percent: f64,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub percent: f64,
    pub status: u16,
}

// ----- validation -----

pub(super) fn rate_limit(
    path: &str,
    f: Option<&RateLimitFile>,
    errs: &mut Errors,
) -> Option<RateLimit> {
    let f = f?;
    let path = format!("{path}.rate_limit");
    let rps = f.requests_per_second;
    if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) {
        errs.push(
            format!("{path}.requests_per_second"),
            format!("{rps} is not a rate; write a number above 0, e.g. 100 or 0.5 (one every 2 s)"),
        );
    }
    let burst = f.burst.unwrap_or_else(|| rps.ceil().clamp(1.0, 1e9) as u32);
    if burst == 0 {
        errs.push(
            format!("{path}.burst"),
            "must be at least 1 (the requests let through at once from a full bucket)",
        );
    }
    let key = match f.key.as_deref().map(str::trim) {
        None | Some("route") => RateKey::Route,
        Some("client_ip") => RateKey::ClientIp,
        Some(k) => match k.strip_prefix("header:").map(str::trim) {
            Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => RateKey::Header(h),
                Err(_) => {
                    errs.push(
                        format!("{path}.key"),
                        format!("`{name}` is not a valid HTTP header name"),
                    );
                    RateKey::Route
                }
            },
            None => {
                errs.push(
                    format!("{path}.key"),
                    format!(
                        "`{k}` is not a rate limit key; use route, client_ip or header:<name>, e.g. header:x-api-key"
                    ),
                );
                RateKey::Route
            }
        },
    };
    let max_keys = f.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(1..=MAX_MAX_KEYS).contains(&max_keys) {
        errs.push(
            format!("{path}.max_keys"),
            format!("{max_keys} is out of range; write 1 to {MAX_MAX_KEYS}"),
        );
    }
    Some(RateLimit {
        requests_per_second: rps,
        burst: burst.max(1),
        key,
        max_keys: max_keys.clamp(1, MAX_MAX_KEYS),
    })
}

pub(super) fn fault(
    path: &str,
    f: Option<&FaultFile>,
    split: &[&str],
    errs: &mut Errors,
) -> Option<Fault> {
    let f = f?;
    let path = format!("{path}.fault");
    if f.delay.is_none() && f.abort.is_none() {
        errs.push(
            &path,
            "set `delay` and/or `abort`, e.g. `fault: { abort: { percent: 5, status: 503 } }`",
        );
    }
    let delay = f.delay.as_ref().map(|d| {
        percent(d.percent, &format!("{path}.delay.percent"), errs);
        if d.duration.0.is_zero() {
            errs.push(format!("{path}.delay.duration"), "must be longer than zero");
        }
        FaultDelay {
            percent: d.percent,
            duration: d.duration.0,
        }
    });
    let abort = f.abort.as_ref().map(|a| {
        percent(a.percent, &format!("{path}.abort.percent"), errs);
        if !(400..=599).contains(&a.status) {
            errs.push(
                format!("{path}.abort.status"),
                format!(
                    "{} is not an error status; write 400 to 599, e.g. 503",
                    a.status
                ),
            );
        }
        FaultAbort {
            percent: a.percent,
            status: a.status,
        }
    });
    if let Some(u) = &f.upstream
        && !split.contains(&u.as_str())
    {
        errs.push(
            format!("{path}.upstream"),
            format!(
                "`{u}` is not in this route's split; the fault applies to requests the split sends to one of: {}",
                split.join(", ")
            ),
        );
    }
    Some(Fault {
        delay,
        abort,
        upstream: f.upstream.as_deref().map(Arc::from),
    })
}

fn percent(p: f64, path: &str, errs: &mut Errors) {
    if !(0.0..=100.0).contains(&p) {
        errs.push(
            path,
            format!("{p} is not a percentage; write 0 to 100 (decimals allowed, e.g. 0.5)"),
        );
    }
}
