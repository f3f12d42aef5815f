//! Durations as users write them: `250ms`, `10s`, `5m`, `1h`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

use super::errors::Errors;

/// A duration parsed from a YAML string; serde reports a bad one at its YAML path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| hint(s, "it has no unit"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| hint(s, "it does not start with a number"))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(hint(s, "the unit is not one of ms, s, m, h")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(hint(s, "it is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn hint(s: &str, why: &str) -> String {
    format!("invalid duration `{s}`: {why}; write a number and a unit, e.g. 250ms, 10s, 5m or 1h")
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 10s or 5m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationStr, E> {
                parse_duration(s).map(DurationStr).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DurationStr, E> {
                Err(E::custom(hint(&n.to_string(), "it has no unit")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DurationStr, E> {
                Err(E::custom(hint(&n.to_string(), "it has no unit")))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<DurationStr, E> {
                Err(E::custom(hint(&n.to_string(), "it has no unit")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A configured duration that must be longer than zero, or `default` when absent.
pub(super) fn positive(
    value: Option<DurationStr>,
    default: std::time::Duration,
    path: &str,
    key: &str,
    errs: &mut Errors,
) -> std::time::Duration {
    match value {
        Some(d) if d.0.is_zero() => {
            errs.push(format!("{path}.{key}"), "must be longer than zero");
            default
        }
        Some(d) => d.0,
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_with_a_hint() {
        for bad in ["10", "ten s", "10 sec", "10x", "", "s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("e.g. 250ms"), "{bad}: {e}");
        }
    }
}
