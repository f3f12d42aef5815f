//! Config for trace context and span export: the top-level `tracing:` block. The YAML shape,
//! the validated model and the validation live together here.
//!
//! Trace context is always passed on; the block only tunes it. A request without a valid
//! `traceparent` starts a new trace, sampled at `sample_ratio`: 1 % by default when `otlp` is
//! set, none by default without it (switchyard then recorded nothing, and says so unless told
//! to be the head sampler for the services behind it). Sampled requests' spans are exported
//! when `otlp` is set.

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::duration::DurationStr;
use super::errors::Errors;
use super::model::BackendAddr;
use super::upstream_tls::{UpstreamTls, UpstreamTlsFile};

/// Share of new traces sampled when export is on and no ratio is written: 1 %, as Istio's
/// default. Requests that come with a `traceparent` keep their caller's decision.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
pub const DEFAULT_SERVICE_NAME: &str = "switchyard";
/// OpenTelemetry's batch span processor defaults (`OTEL_BSP_*`), but for the delay: a proxy's
/// spans are worth seeing within a second.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
pub const DEFAULT_BATCH_SIZE: usize = 512;
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// OTLP exporters' default timeout per export (`OTEL_EXPORTER_OTLP_TIMEOUT`).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The OTLP/HTTP path for traces, used when the endpoint names none.
pub const DEFAULT_TRACES_PATH: &str = "/v1/traces";
/// Upper bounds that catch a typo (an extra zero or three) before it costs memory.
const MAX_QUEUE_SIZE: usize = 1 << 20;

// ----- as written -----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    pub propagate: Option<bool>,
    pub sample_ratio: Option<f64>,
    pub restart_incoming: Option<bool>,
    pub service_name: Option<String>,
    pub otlp: Option<OtlpFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    /// `http://collector:4318/v1/traces` (`https://` for TLS).
    pub endpoint: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub timeout: Option<DurationStr>,
    pub queue_size: Option<usize>,
    pub batch_size: Option<usize>,
    pub flush_interval: Option<DurationStr>,
    pub shutdown_timeout: Option<DurationStr>,
    pub tls: Option<UpstreamTlsFile>,
}

// ----- validated -----

/// Trace context settings, read by every request from its snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Take part in traces (the default): pass a trace context on to every backend, starting
    /// one when the request has none. Off, the client's trace headers pass as they came,
    /// nothing is recorded or exported, and a request pays nothing for tracing.
    pub propagate: bool,
    /// As written, or the default (1 % with `otlp`, 0 without).
    pub sample_ratio: f64,
    /// What a new trace's id is compared with ([`threshold`]); `None` samples no
    /// new trace.
    pub sample_threshold: Option<u64>,
    /// Ignore the client's `traceparent` and `tracestate`: every request starts a new trace (a
    /// front gate that does not let callers pick trace ids or force sampling).
    pub restart_incoming: bool,
    pub service_name: String,
    /// The host name, as `service.instance.id` (Kubernetes sets it to the pod's name).
    pub instance: Option<String>,
    pub otlp: Option<Arc<Otlp>>,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            propagate: true,
            sample_ratio: 0.0,
            sample_threshold: None,
            restart_incoming: false,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            instance: None,
            otlp: None,
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// As written.
    pub endpoint: String,
    pub address: BackendAddr,
    pub path: PathAndQuery,
    pub tls: Option<UpstreamTls>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub queue_size: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub shutdown_timeout: Duration,
}

pub(super) fn tracing(f: Option<&TracingFile>, errs: &mut Errors) -> Tracing {
    let default = TracingFile::default();
    let f = f.unwrap_or(&default);
    let otlp = f.otlp.as_ref().and_then(|o| otlp(o, errs)).map(Arc::new);
    let unwritten = match f.otlp {
        Some(_) => DEFAULT_SAMPLE_RATIO,
        None => 0.0,
    };
    let sample_ratio = match f.sample_ratio {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            errs.push(
                "tracing.sample_ratio",
                format!(
                    "{r} is not a share between 0 and 1; write e.g. 0.01 for 1 % of new traces"
                ),
            );
            unwritten
        }
        Some(r) => r,
        None => unwritten,
    };
    let service_name = match &f.service_name {
        Some(n) if n.trim().is_empty() => {
            errs.push("tracing.service_name", "must not be empty");
            DEFAULT_SERVICE_NAME.to_owned()
        }
        Some(n) => n.clone(),
        None => DEFAULT_SERVICE_NAME.to_owned(),
    };
    let propagate = f.propagate.unwrap_or(true);
    if !propagate && f.otlp.is_some() {
        errs.push(
            "tracing.propagate",
            "is false, but `tracing.otlp` asks for spans: spans need the trace context; drop `otlp` or `propagate: false`",
        );
    }
    Tracing {
        propagate,
        sample_ratio,
        sample_threshold: threshold(sample_ratio),
        restart_incoming: f.restart_incoming.unwrap_or(false),
        service_name,
        instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
        otlp,
    }
}

fn otlp(f: &OtlpFile, errs: &mut Errors) -> Option<Otlp> {
    let before = errs.len();
    let path = "tracing.otlp";
    let endpoint = endpoint(&f.endpoint).map_err(|why| errs.push(format!("{path}.endpoint"), why));
    let mut headers = Vec::new();
    for (k, v) in &f.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| errs.push(format!("{path}.headers.{k}"), "is not a valid header name"));
        let value = HeaderValue::from_str(v).map_err(|_| {
            errs.push(
                format!("{path}.headers.{k}"),
                "the value has characters a header cannot carry (control characters, non-ASCII)",
            )
        });
        if let (Ok(n), Ok(v)) = (name, value) {
            headers.push((n, v));
        }
    }
    use super::duration::positive;
    let timeout = positive(f.timeout, DEFAULT_EXPORT_TIMEOUT, path, "timeout", errs);
    let flush_interval = positive(
        f.flush_interval,
        DEFAULT_FLUSH_INTERVAL,
        path,
        "flush_interval",
        errs,
    );
    let shutdown_timeout = positive(
        f.shutdown_timeout,
        DEFAULT_SHUTDOWN_TIMEOUT,
        path,
        "shutdown_timeout",
        errs,
    );
    let queue_size = f.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
    if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
        errs.push(
            format!("{path}.queue_size"),
            format!("{queue_size} spans: write a number from 1 to {MAX_QUEUE_SIZE}, e.g. 2048"),
        );
    }
    let batch_size = f.batch_size.unwrap_or(DEFAULT_BATCH_SIZE.min(queue_size));
    if batch_size == 0 || batch_size > queue_size {
        errs.push(
            format!("{path}.batch_size"),
            format!(
                "{batch_size} spans: write a number from 1 to the queue_size ({queue_size}), e.g. 512"
            ),
        );
    }
    let (address, req_path, https) = endpoint.ok()?;
    let tls = match (https, &f.tls) {
        (true, tls) => super::upstream_tls::upstream_tls(path, tls.as_ref(), errs),
        (false, None) => None,
        (false, Some(_)) => {
            errs.push(
                format!("{path}.tls"),
                "the endpoint is http://; write https:// to export over TLS",
            );
            None
        }
    };
    (errs.len() == before).then(|| Otlp {
        endpoint: f.endpoint.clone(),
        address,
        path: req_path,
        tls,
        headers,
        timeout,
        queue_size,
        batch_size,
        flush_interval,
        shutdown_timeout,
    })
}

/// The threshold a new trace's randomness (the last 56 bits of its id) must reach to be
/// sampled at `ratio` (clamped to
/// [0, 1]); `None` samples nothing. Computed once per config, compared once per new trace.
pub fn threshold(ratio: f64) -> Option<u64> {
    const SPAN: f64 = (1u64 << 56) as f64;
    if ratio.is_nan() || ratio <= 0.0 {
        return None;
    }
    let t = ((1.0 - ratio.min(1.0)) * SPAN).round();
    Some((t as u64).min(1 << 56))
}

/// `http[s]://host[:port][/path]`: the collector's address, the path (`/v1/traces` when none
/// is given) and whether it is TLS.
pub fn endpoint(s: &str) -> Result<(BackendAddr, PathAndQuery, bool), String> {
    let fix = "write e.g. http://otel-collector:4318/v1/traces";
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("`{s}` is not a URL; {fix}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(format!(
                "`{s}`: the scheme `{other}` is not http or https (OTLP/gRPC is not supported; use the collector's OTLP/HTTP port, 4318); {fix}"
            ));
        }
        None => return Err(format!("`{s}` has no scheme; {fix}")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host; {fix}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{s}`: credentials in the URL are not sent; use `headers` instead"
        ));
    }
    let with_port = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:{}", authority.as_str(), if https { 443 } else { 80 }),
    };
    // The URL parsed already: what is left to check is that a host and a port are named.
    let address = match with_port.parse::<http::uri::Authority>() {
        Ok(a) if !a.host().is_empty() && a.port_u16().is_some_and(|p| p != 0) => {
            BackendAddr { authority: a }
        }
        _ => return Err(format!("`{s}` names no host, or port 0; {fix}")),
    };
    let path = match uri.path_and_query() {
        Some(p) if p.as_str() != "/" && !p.as_str().is_empty() => p.clone(),
        _ => PathAndQuery::from_static(DEFAULT_TRACES_PATH),
    };
    Ok((address, path, https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_address_path_and_scheme() {
        let (a, p, tls) = endpoint("http://collector:4318/v1/traces").unwrap();
        assert_eq!(
            (a.as_str(), p.as_str(), tls),
            ("collector:4318", "/v1/traces", false)
        );
        let (a, p, tls) = endpoint("https://otlp.example.com").unwrap();
        assert_eq!(
            (a.as_str(), p.as_str(), tls),
            ("otlp.example.com:443", "/v1/traces", true)
        );
        let (a, _, _) = endpoint("http://[::1]:4318/").unwrap();
        assert_eq!(a.as_str(), "[::1]:4318");
        for bad in [
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://user:pw@collector:4318",
            "http://collector:0",
            "not a url",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }
}
