//! The YAML as written: serde structs that mirror the file, nothing validated yet.
//!
//! The document is read in pieces (each listener, upstream and route on its own) so that a typo
//! in one route does not hide a typo in the next: every piece's first error is collected, with
//! its full YAML path.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::ConfigError;
use super::duration::DurationStr;

#[derive(Debug, Default)]
pub struct FileConfig {
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub state_dir: Option<String>,
    pub drain_timeout: Option<DurationStr>,
    /// In declaration order: `upstreams` is a mapping, and its order is the user's.
    pub upstreams: Vec<(String, Upstream)>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Option<String>,
    pub bind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub bind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub backends: Vec<String>,
    pub connect_timeout: Option<DurationStr>,
    /// How long an unused upstream connection stays in the pool.
    pub idle_timeout: Option<DurationStr>,
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
    "state_dir",
    "drain_timeout",
    "upstreams",
    "routes",
];

/// Parses the document, collecting the first error of every piece.
pub fn parse(text: &str) -> Result<FileConfig, Vec<ConfigError>> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| vec![yaml_syntax_error(&e)])?;
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
    for (key, value) in top {
        let Some(key) = key.as_str().map(str::to_owned) else {
            errors.push(ConfigError::new("", "top-level keys must be strings"));
            continue;
        };
        match key.as_str() {
            "listeners" => {
                out.listeners = piece_list(value, "listeners", &mut errors);
            }
            "routes" => {
                out.routes = piece_list(value, "routes", &mut errors);
            }
            "upstreams" => {
                out.upstreams = piece_map(value, "upstreams", &mut errors);
            }
            "admin" => out.admin = piece(value, "admin", &mut errors),
            "state_dir" => out.state_dir = piece(value, "state_dir", &mut errors),
            "drain_timeout" => out.drain_timeout = piece(value, "drain_timeout", &mut errors),
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
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn piece<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = match inner.as_str() {
                "." | "" => path.to_owned(),
                _ if inner.starts_with('[') => format!("{path}{inner}"),
                _ => format!("{path}.{inner}"),
            };
            errors.push(ConfigError::new(full, explain_serde(&e.into_inner())));
            None
        }
    }
}

fn piece_list<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<T> {
    match value {
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| piece(v, &format!("{path}[{i}]"), errors))
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            errors.push(ConfigError::new(
                path,
                "must be a list (each item starting with `- `)",
            ));
            Vec::new()
        }
    }
}

fn piece_map<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, T)> {
    match value {
        Value::Mapping(m) => m
            .into_iter()
            .filter_map(|(k, v)| {
                let Some(name) = k.as_str().map(str::to_owned) else {
                    errors.push(ConfigError::new(path, "names must be strings"));
                    return None;
                };
                piece(v, &format!("{path}.{name}"), errors).map(|p| (name, p))
            })
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            errors.push(ConfigError::new(
                path,
                "must be a mapping of name -> settings",
            ));
            Vec::new()
        }
    }
}

fn yaml_syntax_error(e: &serde_yaml::Error) -> ConfigError {
    let at = e
        .location()
        .map(|l| format!("line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    ConfigError::new(at, format!("not valid YAML: {e}"))
}

/// Serde's messages are right but terse; add the closest known key to "unknown field" errors.
fn explain_serde(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg;
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

pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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
        let errors = parse(text).unwrap_err();
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
        let f = parse("upstreams:\n  zeta: {backends: []}\n  alpha: {backends: []}\n").unwrap();
        let names: Vec<&str> = f.upstreams.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("windw", "window"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(did_you_mean("zzzzzz", &["window"]), "");
    }
}
