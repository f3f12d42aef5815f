//! The YAML as written: serde structs that mirror the file, nothing validated yet.
//!
//! The document is read in pieces (each listener, upstream and route on its own), and each piece
//! is read past its errors (`config::repair`), so that every unknown key, wrong type and
//! missing key is collected, with its full YAML path, and the value checks still run on the rest.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::control::OpsFile;
use super::duration::DurationStr;
use super::errors::{ConfigError, did_you_mean, quoted_list};
use super::repair::{self, Patches};
use super::resilience::{CircuitBreakerFile, HealthCheckFile, RetriesFile};
use super::rollout::RolloutFile;
use super::shadow::ShadowFile;
use super::traffic::{FaultFile, RateLimitFile};

#[derive(Debug, Default)]
pub struct FileConfig {
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub ops: Option<OpsFile>,
    pub state_dir: Option<String>,
    pub drain_timeout: Option<DurationStr>,
    /// In declaration order: `upstreams` is a mapping, and its order is the user's.
    pub upstreams: Vec<(String, Upstream)>,
    pub routes: Vec<Route>,
    pub cluster: Option<super::cluster::ClusterFile>,
    /// Name servers for DNS discovery (`resolver:`); the system's when absent.
    pub resolver: Option<super::discover::ResolverFile>,
    /// Trace context and span export (`tracing:`).
    pub tracing: Option<super::tracing::TracingFile>,
    /// Pieces that did not parse, by path (`upstreams.blue`), and sections with such a piece
    /// (`routes`): validation skips what would only repeat their errors.
    pub broken: HashSet<String>,
}

/// What could be read: the pieces that parsed, and the first error of each that did not.
#[derive(Debug)]
pub struct Parsed {
    pub file: FileConfig,
    pub errors: Vec<ConfigError>,
    /// Where a value of the wrong type, or a missing one, was replaced by a stand-in so that
    /// the rest could be read (and checked).
    pub patches: Patches,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Option<String>,
    pub bind: String,
    pub tls: Option<super::tls::ListenerTlsFile>,
    pub limits: Option<super::limits::LimitsFile>,
    pub access_log: Option<super::access_log::AccessLogFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub bind: Option<String>,
    pub token_file: Option<String>,
    pub protect_reads: Option<bool>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Empty when the upstream `discover`s its backends instead.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Backends found by DNS (instead of `backends`).
    pub discover: Option<super::discover::DiscoverFile>,
    pub connect_timeout: Option<DurationStr>,
    /// How long an unused upstream connection stays in the pool.
    pub idle_timeout: Option<DurationStr>,
    pub circuit_breaker: Option<CircuitBreakerFile>,
    pub health_check: Option<HealthCheckFile>,
    /// Percent of open backends past which the breakers are ignored (Envoy's panic mode).
    pub panic_threshold: Option<u8>,
    /// Client TLS to the backends (also implied by `https://` backends).
    pub tls: Option<super::upstream_tls::UpstreamTlsFile>,
    /// `http1` (the default), `http2` or `auto`.
    pub protocol: Option<String>,
    /// gRPC statuses that count as the backend's failure besides the default five.
    pub grpc_failures: Option<Vec<super::grpc::GrpcStatusFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: Match,
    pub timeout: Option<DurationStr>,
    pub split: Vec<SplitEntry>,
    pub sticky: Option<Sticky>,
    pub override_header: Option<String>,
    pub retries: Option<RetriesFile>,
    pub rate_limit: Option<RateLimitFile>,
    pub fault: Option<FaultFile>,
    pub rollout: Option<RolloutFile>,
    pub shadow: Option<ShadowFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    pub upstream: String,
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listeners",
    "admin",
    "ops",
    "state_dir",
    "drain_timeout",
    "upstreams",
    "routes",
    "cluster",
    "resolver",
    "tracing",
];

/// Parses the document, collecting the first error of every piece. Fails outright only when
/// nothing can be read (a YAML syntax error, a document that is not a mapping).
pub fn parse(text: &str) -> Result<Parsed, Vec<ConfigError>> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| vec![yaml_syntax_error(&e, text)])?;
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => {
            return Err(vec![ConfigError::new(
                "",
                "the config is empty; it needs at least `listeners`, `upstreams` and `routes`",
            )]);
        }
        _ => {
            return Err(vec![ConfigError::new(
                "",
                "the config must be a mapping with `listeners`, `upstreams` and `routes`",
            )]);
        }
    };

    let mut out = FileConfig::default();
    let mut errors = Vec::new();
    let mut broken = HashSet::new();
    let mut patches = Patches::default();
    let p = &mut patches;
    for (key, value) in top {
        let Some(key) = key.as_str().map(str::to_owned) else {
            errors.push(ConfigError::new("", "top-level keys must be strings"));
            continue;
        };
        match key.as_str() {
            "listeners" => {
                out.listeners = piece_list(value, "listeners", &mut errors, &mut broken, p);
            }
            "routes" => out.routes = piece_list(value, "routes", &mut errors, &mut broken, p),
            "upstreams" => {
                out.upstreams = piece_map(value, "upstreams", &mut errors, &mut broken, p);
            }
            "admin" => out.admin = piece(value, "admin", &mut errors, p),
            "ops" => out.ops = piece(value, "ops", &mut errors, p),
            "state_dir" => out.state_dir = piece(value, "state_dir", &mut errors, p),
            "drain_timeout" => out.drain_timeout = piece(value, "drain_timeout", &mut errors, p),
            "resolver" => out.resolver = piece(value, "resolver", &mut errors, p),
            "tracing" => out.tracing = piece(value, "tracing", &mut errors, p),
            "cluster" => out.cluster = piece(value, "cluster", &mut errors, p),
            other => errors.push(ConfigError::new(
                other,
                format!(
                    "unknown top-level key `{other}`{}; expected one of {}",
                    did_you_mean(other, TOP_LEVEL_KEYS),
                    quoted_list(TOP_LEVEL_KEYS)
                ),
            )),
        }
    }
    out.broken = broken;
    Ok(Parsed {
        file: out,
        errors,
        patches,
    })
}

/// Reads one piece, collecting every structural error in it (see [`super::repair`]).
fn piece<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
    patches: &mut Patches,
) -> Option<T> {
    let mut found = Vec::new();
    let parsed = repair::read(value, path, &mut found, patches);
    errors.extend(
        found
            .into_iter()
            .map(|(at, e)| ConfigError::new(at, explain_serde(&e))),
    );
    parsed
}

fn piece_list<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
    broken: &mut HashSet<String>,
    patches: &mut Patches,
) -> Vec<T> {
    let before = errors.len();
    let out = match value {
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| piece(v, &format!("{path}[{i}]"), errors, patches))
            .collect(),
        Value::Null => Vec::new(),
        Value::Mapping(_) => {
            errors.push(ConfigError::new(
                path,
                "is a mapping but must be a list: start each item with `- `, e.g. `- name: checkout` with its keys indented under it",
            ));
            Vec::new()
        }
        _ => {
            errors.push(ConfigError::new(
                path,
                "must be a list (each item starting with `- `)",
            ));
            Vec::new()
        }
    };
    if errors.len() > before {
        broken.insert(path.to_owned());
    }
    out
}

fn piece_map<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
    broken: &mut HashSet<String>,
    patches: &mut Patches,
) -> Vec<(String, T)> {
    match value {
        Value::Mapping(m) => m
            .into_iter()
            .filter_map(|(k, v)| {
                let Some(name) = k.as_str().map(str::to_owned) else {
                    errors.push(ConfigError::new(path, "names must be strings"));
                    return None;
                };
                let piece_path = format!("{path}.{name}");
                let parsed = piece(v, &piece_path, errors, patches);
                if parsed.is_none() {
                    broken.insert(piece_path);
                }
                parsed.map(|p| (name, p))
            })
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            errors.push(ConfigError::new(
                path,
                "must be a mapping of name -> settings, e.g. `checkout-blue: { backends: [\"10.0.0.11:8080\"] }`",
            ));
            broken.insert(path.to_owned());
            Vec::new()
        }
    }
}

fn yaml_syntax_error(e: &serde_yaml::Error, text: &str) -> ConfigError {
    let mut msg = e.to_string();
    let at = match e.location() {
        Some(l) => {
            let at = format!("line {} column {}", l.line(), l.column());
            // serde_yaml repeats the location in its message; the path already says it.
            msg = msg.replacen(&format!(" at {at}"), "", 1);
            at
        }
        // serde_yaml places no error that spans documents; the whole file is the place.
        None => "document".to_owned(),
    };
    if msg.contains("more than one document") {
        return ConfigError::new(
            at,
            "not valid YAML: the file holds more than one document (a `---` line, or text after the first document ends, e.g. after a closing quote or bracket); keep one",
        );
    }
    let hint = if text.contains('\t') && msg.contains("cannot start any token") {
        "YAML indentation must use spaces, not tabs"
    } else {
        "check the indentation (keys of one mapping start in the same column) and that every `[` and `{` is closed"
    };
    ConfigError::new(at, format!("not valid YAML: {msg}; {hint}"))
}

/// Serde's messages are right but terse: add the closest known key to "unknown field" errors,
/// and say "whole number" and "list" where serde says "u32" and "sequence".
fn explain_serde(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    if let Some(field) = msg.strip_prefix("missing field `") {
        let field = field.trim_end_matches('`');
        return format!("missing required key `{field}`");
    }
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg
            .replace("expected u32", "expected a whole number")
            .replace("expected u64", "expected a whole number")
            .replace(
                "expected a sequence",
                "expected a list, even of one item, e.g. [\"10.0.0.11:8080\"]",
            )
            .replace("invalid type: ", "wrong type: found ");
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return msg;
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    format!(
        "unknown key `{field}`{}; expected one of {}",
        did_you_mean(field, &known),
        quoted_list(&known)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_one_error_per_broken_piece() {
        let text = r#"
listeners: [{ bind: "127.0.0.1:8080", nmae: x }]
upstreams:
  a: { backends: ["127.0.0.1:1"], conect_timeout: 1s }
routes:
  - { name: r, split: [{ upstream: a, weight: "ten" }] }
bogus: 1
"#;
        let errors = parse(text).unwrap().errors;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].nmae",
                "upstreams.a.conect_timeout",
                "routes[0].split[0].weight",
                "bogus"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("did you mean `name`?"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1]
                .message
                .contains("did you mean `connect_timeout`?")
        );
        assert!(errors[3].message.contains("unknown top-level key `bogus`"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errors = parse("routes: [\n  - {").unwrap_err();
        assert!(errors[0].path.starts_with("line "), "{:?}", errors);
    }

    #[test]
    fn upstream_order_is_declaration_order() {
        let f = parse("upstreams:\n  zeta: {backends: []}\n  alpha: {backends: []}\n")
            .unwrap()
            .file;
        let names: Vec<&str> = f.upstreams.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
    }
}
