//! Config for what keeps traffic off failing backends: circuit breakers and active health checks
//! (per upstream), retries with a budget (per route). The YAML shape, the validated model and
//! the validation live together here; defaults follow DESIGN.md's table.

use std::time::Duration;

use serde::Deserialize;

use super::duration::{DurationStr, positive as duration};
use super::errors::Errors;
use super::grpc::{self, GrpcCodes};

// ----- as written -----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<DurationStr>,
    pub open_for: Option<DurationStr>,
    pub max_open_for: Option<DurationStr>,
    pub half_open_requests: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// An HTTP GET of this path (or `grpc`).
    pub path: Option<String>,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`) instead of a path.
    pub grpc: Option<GrpcHealthFile>,
    pub interval: Option<DurationStr>,
    pub timeout: Option<DurationStr>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthFile {
    /// The service asked about; empty (the default) asks about the server as a whole.
    #[serde(default)]
    pub service: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    pub attempts: u32,
    #[serde(default)]
    pub on: Option<Vec<RetryOnFile>>,
    pub budget_percent: Option<f64>,
    pub min_per_second: Option<u32>,
    pub per_try_timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RetryOnFile {
    Status(u16),
    Name(String),
}

// ----- validated -----

/// Per-backend circuit breaker settings (one set per upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Open after this many upstream failures in a row (0: never on a streak).
    pub consecutive_failures: u32,
    /// ...or when this share of the window's requests failed,
    pub failure_rate: f64,
    /// ...once the window holds at least this many requests.
    pub min_requests: u32,
    pub window: Duration,
    /// Open this long at first; doubled on each re-open, up to `max_open_for`.
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// Probes let through at once when half-open; this many successes close the breaker.
    pub half_open_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            half_open_requests: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path asked for (`/grpc.health.v1.Health/Check` for a gRPC check).
    pub path: String,
    /// A gRPC health check, for this service (`""`: the whole server).
    pub grpc_service: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing checks in a row that bring an unhealthy backend back.
    pub healthy_threshold: u32,
    /// Failing checks in a row that take a healthy backend out.
    pub unhealthy_threshold: u32,
}

/// Which failures a retry is attempted on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub statuses: Vec<u16>,
    /// gRPC statuses (`unavailable`, `RESOURCE_EXHAUSTED`...); only those the answering
    /// upstream counts as failures are ever retried.
    pub grpc: GrpcCodes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (so `attempts: 2` means up to three tries).
    pub attempts: u32,
    pub on: RetryOn,
    /// Retries may add at most this share of the route's recent requests...
    pub budget_percent: f64,
    /// ...plus this many per second, so low traffic can still retry.
    pub min_per_second: u32,
    /// Time allowed for one try; the route's `timeout` still bounds them all.
    pub per_try_timeout: Option<Duration>,
}

pub const DEFAULT_PANIC_THRESHOLD: u8 = 50;
/// Largest request body kept in memory so a failed try can be replayed.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

// ----- validation -----

pub(super) fn breaker(
    path: &str,
    f: Option<&CircuitBreakerFile>,
    errs: &mut Errors,
) -> BreakerConfig {
    let d = BreakerConfig::default();
    let Some(f) = f else { return d };
    let path = format!("{path}.circuit_breaker");
    let rate = f.failure_rate.unwrap_or(d.failure_rate);
    if !(rate > 0.0 && rate <= 1.0) {
        errs.push(
            format!("{path}.failure_rate"),
            format!("{rate} is not a share of requests; write a number above 0 and at most 1, e.g. 0.5 for half"),
        );
    }
    let half_open = f.half_open_requests.unwrap_or(d.half_open_requests);
    if half_open == 0 {
        errs.push(format!("{path}.half_open_requests"), "must be at least 1");
    }
    let open_for = duration(f.open_for, d.open_for, &path, "open_for", errs);
    let max_open_for = duration(
        f.max_open_for,
        d.max_open_for.max(open_for),
        &path,
        "max_open_for",
        errs,
    );
    if max_open_for < open_for {
        errs.push(
            format!("{path}.max_open_for"),
            format!("{max_open_for:?} is shorter than open_for ({open_for:?})"),
        );
    }
    BreakerConfig {
        enabled: f.enabled.unwrap_or(true),
        consecutive_failures: f.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate: rate,
        min_requests: f.min_requests.unwrap_or(d.min_requests).max(1),
        window: duration(f.window, d.window, &path, "window", errs),
        open_for,
        max_open_for,
        half_open_requests: half_open.max(1),
    }
}

pub(super) fn health_check(
    path: &str,
    f: Option<&HealthCheckFile>,
    errs: &mut Errors,
) -> Option<HealthCheck> {
    let f = f?;
    let path = format!("{path}.health_check");
    let (check_path, grpc_service) = match (&f.path, &f.grpc) {
        (Some(p), None) => {
            if !p.starts_with('/') {
                errs.push(
                    format!("{path}.path"),
                    format!("`{p}` must start with `/`, e.g. /healthz"),
                );
            }
            (p.clone(), None)
        }
        (None, Some(g)) => (
            "/grpc.health.v1.Health/Check".to_owned(),
            Some(g.service.clone()),
        ),
        (Some(_), Some(_)) => {
            errs.push(
                path.clone(),
                "give `path` (an HTTP check) or `grpc` (the gRPC health protocol), not both",
            );
            (String::new(), None)
        }
        (None, None) => {
            errs.push(
                path.clone(),
                "needs `path` (an HTTP GET, e.g. /healthz) or `grpc: {}` (the gRPC health protocol)",
            );
            (String::new(), None)
        }
    };
    let interval = duration(f.interval, Duration::from_secs(5), &path, "interval", errs);
    // Checks never overlap (the next one waits for the last), so a timeout longer than the
    // interval only slows the checking down.
    let timeout = duration(
        f.timeout,
        Duration::from_secs(1).min(interval),
        &path,
        "timeout",
        errs,
    );
    let threshold = |v: Option<u32>, default: u32, key: &str, errs: &mut Errors| match v {
        Some(0) => {
            errs.push(format!("{path}.{key}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    Some(HealthCheck {
        path: check_path,
        grpc_service,
        interval,
        timeout,
        healthy_threshold: threshold(f.healthy_threshold, 2, "healthy_threshold", errs),
        unhealthy_threshold: threshold(f.unhealthy_threshold, 3, "unhealthy_threshold", errs),
    })
}

pub(super) fn panic_threshold(path: &str, v: Option<u8>, errs: &mut Errors) -> u8 {
    match v {
        Some(p) if p > 100 => {
            errs.push(
                format!("{path}.panic_threshold"),
                format!("{p} is not a percentage; write 0 to 100 (100 turns panic mode off)"),
            );
            DEFAULT_PANIC_THRESHOLD
        }
        Some(p) => p,
        None => DEFAULT_PANIC_THRESHOLD,
    }
}

pub(super) fn retries(
    path: &str,
    f: Option<&RetriesFile>,
    errs: &mut Errors,
) -> Option<RetryPolicy> {
    let f = f?;
    let path = format!("{path}.retries");
    if f.attempts > 10 {
        errs.push(
            format!("{path}.attempts"),
            format!(
                "{} retries per request would multiply load; use at most 10",
                f.attempts
            ),
        );
    }
    let mut on = RetryOn::default();
    match &f.on {
        None => {
            on.connect_failure = true;
            on.reset = true;
            on.statuses = vec![502, 503, 504];
        }
        Some(list) => {
            for (i, item) in list.iter().enumerate() {
                match item {
                    RetryOnFile::Status(code) if (500..600).contains(code) => on.statuses.push(*code),
                    RetryOnFile::Name(n) if n == "connect-failure" => on.connect_failure = true,
                    RetryOnFile::Name(n) if n == "reset" => on.reset = true,
                    RetryOnFile::Name(n) if n == "timeout" => on.timeout = true,
                    RetryOnFile::Name(n) if n == "5xx" => on.statuses.extend(500..600),
                    RetryOnFile::Name(n) if grpc::code(n).is_some_and(|c| c != 0) => {
                        on.grpc = grpc::code(n).map_or(on.grpc, |c| on.grpc.with(c));
                    }
                    other => errs.push(
                        format!("{path}.on[{i}]"),
                        format!(
                            "{} is not a retry condition; use connect-failure, reset, timeout, 5xx, a status from 500 to 599, or a gRPC status the upstream counts as a failure (by default unavailable, internal, unknown, deadline-exceeded, data-loss)",
                            match other {
                                RetryOnFile::Status(c) => c.to_string(),
                                RetryOnFile::Name(n) => format!("`{n}`"),
                            },
                        ),
                    ),
                }
            }
        }
    }
    let budget = f.budget_percent.unwrap_or(20.0);
    if !(0.0..=100.0).contains(&budget) {
        errs.push(
            format!("{path}.budget_percent"),
            format!("{budget} is not a percentage; write 0 to 100 (20 lets retries add a fifth more load)"),
        );
    }
    Some(RetryPolicy {
        attempts: f.attempts,
        on,
        budget_percent: budget,
        min_per_second: f.min_per_second.unwrap_or(3),
        per_try_timeout: f
            .per_try_timeout
            .map(|d| duration(Some(d), d.0, &path, "per_try_timeout", errs)),
    })
}
