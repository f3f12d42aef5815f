//! Reading one piece of YAML into its serde struct while collecting *every* structural error in
//! it, not only serde's first.
//!
//! serde stops at the first unknown key, wrong type or missing key. To go on, the piece is
//! patched where serde stopped and read again: an unknown key is dropped; a value of the wrong
//! type, or a missing one, is replaced by the first stand-in that reads (`null`, `""`, `0`,
//! `false`, `[]`, `{}`). Each patch is reported once, at its YAML path; a stand-in that does not
//! read either is ours, not the user's, and is never reported. The patched piece then goes
//! through the value checks like any other, and [`Patches::hides`] drops what those say about a
//! stand-in (a `weight` read as 0 is not "every weight is 0").

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::Value;

/// Stand-ins for a value of the wrong type or a missing one, tried in order.
fn stand_in(n: usize) -> Option<Value> {
    Some(match n {
        0 => Value::Null,
        1 => Value::String(String::new()),
        2 => Value::Number(0.into()),
        3 => Value::Bool(false),
        4 => Value::Sequence(Vec::new()),
        5 => Value::Mapping(serde_yaml::Mapping::new()),
        _ => return None,
    })
}

/// More errors than this in one piece: report what was found and give up on the piece.
const MAX_PATCHES: usize = 64;

/// One step into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Name(String),
    Index(usize),
}

/// Where a piece was patched with a stand-in (YAML paths, e.g. `routes[1].split[0].weight`).
#[derive(Debug, Default, Clone)]
pub struct Patches(Vec<String>);

impl Patches {
    /// Whether an error found at `path` by the value checks may be about a stand-in: it is at,
    /// above or below a patched place.
    pub fn hides(&self, path: &str) -> bool {
        self.0.iter().any(|p| within(path, p) || within(p, path))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `inner` is `outer` or a path below it.
fn within(inner: &str, outer: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// An error serde reported: where the offending value is and what kind of error it is.
struct Found {
    at: Vec<Key>,
    kind: Kind,
    error: serde_yaml::Error,
}

enum Kind {
    UnknownKey,
    /// A key the struct at `at` needs is missing; `at` already ends with its name.
    Missing,
    /// The value at `at` has the wrong type or an invalid value.
    Invalid,
}

/// Reads `value` as a `T`, pushing `(path, serde error)` for every structural error found and
/// recording where stand-ins went. `None` when the piece could not be patched into shape; its
/// errors are still pushed.
pub fn read<T: DeserializeOwned>(
    mut value: Value,
    path: &str,
    errors: &mut Vec<(String, serde_yaml::Error)>,
    patches: &mut Patches,
) -> Option<T> {
    // Places patched with a stand-in, and how many stand-ins each has had.
    let mut tried: Vec<(Vec<Key>, usize)> = Vec::new();
    for _ in 0..MAX_PATCHES {
        let found = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => {
                patches.0.extend(tried.iter().map(|(at, _)| join(path, at)));
                return Some(v);
            }
            Err(e) => locate(e)?,
        };
        // Below a stand-in, the error is about the stand-in.
        let ours = tried.iter().any(|(t, _)| found.at.starts_with(t));
        if !ours {
            errors.push((join(path, &found.at), found.error));
        }
        let patched = match found.kind {
            Kind::UnknownKey => remove(&mut value, &found.at),
            Kind::Missing | Kind::Invalid => {
                let n = match tried.iter_mut().find(|(t, _)| *t == found.at) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        tried.push((found.at.clone(), 0));
                        0
                    }
                };
                // Only an Option or a defaulted key reads from nothing; for the others the
                // stand-ins below take over.
                stand_in(n).is_some_and(|v| set(&mut value, &found.at, v))
            }
        };
        if !patched {
            return None;
        }
    }
    None
}

fn locate(e: serde_path_to_error::Error<serde_yaml::Error>) -> Option<Found> {
    let mut at = Vec::new();
    for seg in e.path().iter() {
        at.push(match seg {
            Segment::Seq { index } => Key::Index(*index),
            Segment::Map { key } => Key::Name(key.clone()),
            Segment::Enum { variant } => Key::Name(variant.clone()),
            Segment::Unknown => return None,
        });
    }
    let error = e.into_inner();
    let msg = error.to_string();
    let kind = if msg.starts_with("unknown field `") {
        Kind::UnknownKey
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        at.push(Key::Name(field.to_owned()));
        Kind::Missing
    } else {
        Kind::Invalid
    };
    Some(Found { at, kind, error })
}

fn join(piece: &str, at: &[Key]) -> String {
    let mut out = piece.to_owned();
    for k in at {
        match k {
            Key::Name(n) if out.is_empty() => out.push_str(n),
            Key::Name(n) => {
                out.push('.');
                out.push_str(n);
            }
            Key::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn get_mut<'a>(mut value: &'a mut Value, at: &[Key]) -> Option<&'a mut Value> {
    for k in at {
        value = match (value, k) {
            (Value::Mapping(m), Key::Name(n)) => m.get_mut(n.as_str())?,
            (Value::Sequence(s), Key::Index(i)) => s.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Puts `v` at `at` (replacing a value, or adding a missing key); false if there is no place.
fn set(value: &mut Value, at: &[Key], v: Value) -> bool {
    let Some((last, parent)) = at.split_last() else {
        *value = v;
        return true;
    };
    let Some(parent) = get_mut(value, parent) else {
        return false;
    };
    if parent.is_null() && matches!(last, Key::Name(_)) {
        // serde_yaml reads `null` as an empty struct, so a key can go missing from it.
        *parent = Value::Mapping(serde_yaml::Mapping::new());
    }
    match (parent, last) {
        (Value::Mapping(m), Key::Name(n)) => {
            m.insert(Value::String(n.clone()), v);
            true
        }
        (Value::Sequence(s), Key::Index(i)) if *i < s.len() => {
            s[*i] = v;
            true
        }
        _ => false,
    }
}

fn remove(value: &mut Value, at: &[Key]) -> bool {
    let Some((Key::Name(n), parent)) = at.split_last() else {
        return false;
    };
    match get_mut(value, parent) {
        Some(Value::Mapping(m)) => m.shift_remove(n.as_str()).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Route {
        name: String,
        timeout: Option<u32>,
        split: Vec<Entry>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Entry {
        upstream: String,
        weight: u32,
    }

    fn read_all(yaml: &str) -> (Option<Route>, Vec<(String, String)>, Patches) {
        let mut errors = Vec::new();
        let mut patches = Patches::default();
        let v = read::<Route>(
            serde_yaml::from_str(yaml).unwrap(),
            "routes[0]",
            &mut errors,
            &mut patches,
        );
        let errors = errors
            .into_iter()
            .map(|(p, e)| (p, e.to_string()))
            .collect();
        (v, errors, patches)
    }

    #[test]
    fn every_structural_error_of_a_piece_in_one_read() {
        let (route, errors, patches) = read_all(
            "{ name: r, timout: 5, timeout: soon, split: [{ weight: ten }, { upstream: a, weight: 1, x: 1 }] }",
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].timout",
                "routes[0].timeout",
                "routes[0].split[0].weight",
                "routes[0].split[0].upstream",
                "routes[0].split[1].x",
            ],
            "{errors:?}"
        );
        assert!(errors[3].1.contains("missing field `upstream`"));
        let route = route.expect("patched into shape");
        assert_eq!(route.timeout, None, "a wrong Option reads as absent");
        assert_eq!(route.split[1].upstream, "a", "what was right is kept");
        assert!(patches.hides("routes[0].split"), "above a stand-in");
        assert!(patches.hides("routes[0].split[0].weight"));
        assert!(!patches.hides("routes[0].split[1].upstream"));
        assert!(!patches.hides("routes[0].name"));
        assert!(
            !patches.hides("routes[0].split[0].weights"),
            "a sibling key"
        );
    }

    #[test]
    fn a_piece_of_the_wrong_shape_is_one_error() {
        let (route, errors, _) = read_all("[1, 2]");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "routes[0]");
        assert!(route.is_some(), "patched from an empty mapping");
    }
}
