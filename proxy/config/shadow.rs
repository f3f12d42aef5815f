//! Config for a route's shadow traffic (`shadow:` on a route): the YAML shape, the validated
//! model and the validation, together. Defaults aim at "safe to turn on in production": a
//! bounded body, a bounded number in flight, a timeout, idempotent methods only.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use super::duration::{DurationStr, positive as duration};
use super::errors::Errors;

// ----- as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    pub upstream: String,
    pub percent: f64,
    pub sample: Option<SampleFile>,
    pub host: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_in_flight: Option<u32>,
    pub timeout: Option<DurationStr>,
    pub methods: Option<Vec<String>>,
    pub compare: Option<bool>,
    pub compare_headers: Option<Vec<String>>,
    pub ignore_fields: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFile {
    Random,
    Sticky,
}

// ----- validated -----

/// How requests are chosen for shadowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Spread evenly over the route's requests, whoever sends them.
    Random,
    /// By the route's sticky key: a given user is always or never shadowed.
    Sticky,
}

impl Sample {
    pub fn as_str(self) -> &'static str {
        match self {
            Sample::Random => "random",
            Sample::Sticky => "sticky",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub upstream: Arc<str>,
    pub percent: f64,
    /// `percent` in hundredths of a percent (0 to 10,000), what the sampler compares against.
    pub basis_points: u32,
    pub sample: Sample,
    /// The `Host` the shadow copy carries; `None` keeps the client's.
    pub host: Option<HeaderValue>,
    pub max_body_bytes: usize,
    pub max_in_flight: u32,
    pub timeout: Duration,
    pub methods: Vec<Method>,
    pub compare: bool,
    pub compare_headers: Vec<HeaderName>,
    /// JSON pointers, already checked; left out of a JSON body comparison.
    pub ignore_fields: Vec<String>,
}

pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Memory bound: `max_in_flight` copies of at most this much each (twice with `compare`).
pub const MAX_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Methods a server must be able to receive twice (RFC 9110 9.2.2): mirrored by default.
pub fn default_methods() -> Vec<Method> {
    vec![
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
}

// ----- validation -----

/// Checks a route's `shadow` block. `upstream_known` says whether a name is a defined (or a
/// broken, already reported) upstream; `route_sticky` whether the route has a sticky key.
pub(super) fn shadow(
    path: &str,
    f: Option<&ShadowFile>,
    upstream_check: &dyn Fn(&str) -> Result<(), String>,
    route_sticky: bool,
    errs: &mut Errors,
) -> Option<Shadow> {
    let f = f?;
    let path = format!("{path}.shadow");
    if let Err(why) = upstream_check(&f.upstream) {
        errs.push(format!("{path}.upstream"), why);
    }
    if !(0.0..=100.0).contains(&f.percent) {
        errs.push(
            format!("{path}.percent"),
            format!(
                "{} is not a percentage; write 0 to 100, e.g. `percent: 10` to mirror one request in ten",
                f.percent
            ),
        );
    }
    let sample = match f.sample {
        None | Some(SampleFile::Random) => Sample::Random,
        Some(SampleFile::Sticky) => {
            if !route_sticky {
                errs.push(
                    format!("{path}.sample"),
                    "`sticky` sampling follows the route's sticky key, but this route has none; add e.g. `sticky: { header: x-user-id }` to the route, or use `sample: random`",
                );
            }
            Sample::Sticky
        }
    };
    let host = f.host.as_deref().and_then(|h| {
        let ok = !h.is_empty()
            && !h.contains("://")
            && !h.contains('/')
            && h.parse::<http::uri::Authority>().is_ok();
        match HeaderValue::from_str(h) {
            Ok(v) if ok => Some(v),
            _ => {
                errs.push(
                    format!("{path}.host"),
                    format!("`{h}` is not a host; write e.g. checkout-next.internal or checkout-next.internal:8080"),
                );
                None
            }
        }
    });
    let max_body_bytes = f.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes > MAX_MAX_BODY_BYTES {
        errs.push(
            format!("{path}.max_body_bytes"),
            format!(
                "{max_body_bytes} bytes per copy is too much to hold in memory; use at most {MAX_MAX_BODY_BYTES} (16 MiB)"
            ),
        );
    }
    let max_in_flight = f.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        errs.push(
            format!("{path}.max_in_flight"),
            "must be at least 1; to stop shadowing, set `percent: 0` or remove `shadow`",
        );
    }
    let timeout = duration(f.timeout, DEFAULT_TIMEOUT, &path, "timeout", errs);
    let methods = match &f.methods {
        None => default_methods(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let upper = m.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(Method::CONNECT) | Err(_) => {
                        errs.push(
                            format!("{path}.methods[{i}]"),
                            format!("`{m}` is not a method that can be mirrored; write e.g. GET, POST or PUT"),
                        );
                        None
                    }
                    Ok(method) => Some(method),
                }
            })
            .collect(),
    };
    let compare_headers = match &f.compare_headers {
        None => vec![http::header::CONTENT_TYPE],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errs.push(
                        format!("{path}.compare_headers[{i}]"),
                        format!("`{h}` is not a valid HTTP header name"),
                    );
                    None
                }
            })
            .collect(),
    };
    let ignore_fields = f
        .ignore_fields
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| match json_pointer(p) {
            Ok(()) => Some(p.clone()),
            Err(why) => {
                errs.push(format!("{path}.ignore_fields[{i}]"), why);
                None
            }
        })
        .collect();
    Some(Shadow {
        upstream: f.upstream.as_str().into(),
        percent: f.percent,
        basis_points: (f.percent.clamp(0.0, 100.0) * 100.0).round() as u32,
        sample,
        host,
        max_body_bytes: max_body_bytes.min(MAX_MAX_BODY_BYTES) as usize,
        max_in_flight: max_in_flight.max(1),
        timeout,
        methods,
        compare: f.compare.unwrap_or(false),
        compare_headers,
        ignore_fields,
    })
}

/// An RFC 6901 JSON pointer naming a field (`/timestamp`, `/items/0/id`, `/a~1b` for `a/b`).
pub fn json_pointer(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!(
            "`{p}` is not a JSON pointer; start it with `/`, e.g. /{} or /meta/request_id",
            p.trim_start_matches(['.', '$'])
        ));
    }
    let bytes = p.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "`{p}` has a `~` that is not `~0` (for ~) or `~1` (for /)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_shadow(block: &str) -> Result<Shadow, Vec<String>> {
        let text = format!(
            "listeners: [{{ bind: '127.0.0.1:0' }}]\n\
             upstreams: {{ a: {{ backends: ['h:1'] }}, b: {{ backends: ['h:2'] }} }}\n\
             routes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}], shadow: {block} }}]\n"
        );
        match crate::config::parse_str(&text) {
            Ok(c) => Ok(c.routes[0].shadow.clone().unwrap()),
            Err(e) => Err(e.0.iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let s = route_shadow("{ upstream: b, percent: 12.5 }").unwrap();
        assert_eq!(&*s.upstream, "b");
        assert_eq!(s.basis_points, 1250);
        assert_eq!(s.sample, Sample::Random);
        assert_eq!(s.host, None);
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(s.max_in_flight, 100);
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.methods, default_methods());
        assert!(!s.methods.contains(&Method::POST));
        assert!(!s.compare);
        assert_eq!(s.compare_headers, [http::header::CONTENT_TYPE]);
        assert!(s.ignore_fields.is_empty());
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let errs = route_shadow(
            "{ upstream: c, percent: -1, host: 'http://x/', max_body_bytes: 99999999999, methods: [get, 'B AD'], ignore_fields: [x] }",
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].shadow.upstream",
                "routes[0].shadow.percent",
                "routes[0].shadow.host",
                "routes[0].shadow.max_body_bytes",
                "routes[0].shadow.methods[1]",
                "routes[0].shadow.ignore_fields[0]",
            ],
            "{errs:#?}"
        );
        let ok = route_shadow("{ upstream: b, percent: 100, methods: [post, patch] }").unwrap();
        assert_eq!(ok.methods, [Method::POST, Method::PATCH]);
    }

    #[test]
    fn json_pointers_are_checked() {
        for good in ["/timestamp", "/a/0/b", "/a~1b", "/~0x", "/"] {
            assert!(json_pointer(good).is_ok(), "{good}");
        }
        for bad in ["timestamp", "$.a", "/a~2", "/a~", ""] {
            assert!(json_pointer(bad).is_err(), "{bad}");
        }
    }
}
