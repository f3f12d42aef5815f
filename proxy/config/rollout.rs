//! A route's `rollout:` block: the YAML as written, the validated spec, and its validation
//! (every error with its YAML path). Defaults follow DESIGN.md (error rate <= 1 %, p99 <= 500 ms).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{DurationStr, positive as duration};
use super::errors::Errors;

// ----- as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub strategy: String,
    pub stable: String,
    pub canary: String,
    pub steps: Option<Vec<u32>>,
    pub step_interval: Option<DurationStr>,
    /// Blue-green only: how long the new active color is watched after the switch.
    pub post_promotion: Option<DurationStr>,
    #[serde(default)]
    pub gates: GatesFile,
    pub on_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    pub min_requests: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<u64>,
    pub max_p99_ratio: Option<f64>,
    pub abort_error_rate: Option<f64>,
    pub abort_min_requests: Option<u64>,
    pub max_shadow_mismatch_rate: Option<f64>,
}

// ----- validated -----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Canary,
    BlueGreen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    Rollback,
    Pause,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gates {
    /// Canary requests a step needs before any verdict but Hold.
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: u64,
    pub max_p99_ratio: Option<f64>,
    /// A canary error rate at or above this over its last `abort_min_requests` rolls back at once.
    pub abort_error_rate: f64,
    pub abort_min_requests: u64,
    pub max_shadow_mismatch_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutSpec {
    pub strategy: Strategy,
    pub stable: String,
    pub canary: String,
    /// Canary weight per step (canary); `[0, 100]` for blue-green (preview, then switched).
    pub steps: Vec<u32>,
    #[serde(with = "millis")]
    pub step_interval: Duration,
    #[serde(with = "millis")]
    pub post_promotion: Duration,
    pub gates: Gates,
    pub on_failure: OnFailure,
}

impl RolloutSpec {
    /// How long step `i` lasts at least: blue-green's switched step is its post-promotion watch.
    pub fn min_duration(&self, step: usize) -> Duration {
        match self.strategy {
            Strategy::BlueGreen if step > 0 => self.post_promotion,
            _ => self.step_interval,
        }
    }

    /// The steps actually walked: blue-green without a watch switches and is done.
    pub fn step_count(&self) -> usize {
        match self.strategy {
            Strategy::BlueGreen if self.post_promotion.is_zero() => 1,
            _ => self.steps.len(),
        }
    }

    /// Canary weight at step `i` (canary and stable share 100).
    pub fn canary_weight(&self, step: usize) -> u32 {
        self.steps.get(step).copied().unwrap_or(100).min(100)
    }

    /// A stable digest of the spec: a reload that leaves it alone leaves the rollout alone.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        // FNV-1a: stable across runs and builds, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

pub const DEFAULT_STEPS: [u32; 4] = [5, 20, 50, 100];
pub const DEFAULT_STEP_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
pub const DEFAULT_MAX_P99_MS: u64 = 500;
/// The abort threshold is this many times the error-rate gate (capped at 100 %).
pub const ABORT_FACTOR: f64 = 5.0;

// ----- validation -----

/// Validates `rollout:` of the route at `path` whose split names `split`.
pub(super) fn rollout(
    path: &str,
    f: Option<&RolloutFile>,
    split: &[&str],
    errs: &mut Errors,
) -> Option<RolloutSpec> {
    let f = f?;
    let path = format!("{path}.rollout");
    let strategy = match f.strategy.as_str() {
        "canary" => Strategy::Canary,
        "blue-green" => Strategy::BlueGreen,
        other => {
            errs.push(
                format!("{path}.strategy"),
                format!("`{other}` is not a strategy; use `canary` or `blue-green`"),
            );
            Strategy::Canary
        }
    };
    for (key, name) in [("stable", &f.stable), ("canary", &f.canary)] {
        if !split.contains(&name.as_str()) {
            errs.push(
                format!("{path}.{key}"),
                format!(
                    "`{name}` is not in this route's split ({}); a rollout moves weight between two of the split's upstreams",
                    split.join(", ")
                ),
            );
        }
    }
    if f.stable == f.canary {
        errs.push(
            format!("{path}.canary"),
            "is the same upstream as `stable`; name the new version here",
        );
    }
    let steps = match (strategy, &f.steps) {
        (Strategy::BlueGreen, Some(_)) => {
            errs.push(
                format!("{path}.steps"),
                "blue-green has no steps (it switches 0 -> 100 at once); remove `steps` or use `strategy: canary`",
            );
            vec![0, 100]
        }
        (Strategy::BlueGreen, None) => vec![0, 100],
        (Strategy::Canary, None) => DEFAULT_STEPS.to_vec(),
        (Strategy::Canary, Some(s)) => {
            check_steps(&path, s, errs);
            s.clone()
        }
    };
    let post_promotion = match (strategy, f.post_promotion) {
        (Strategy::Canary, Some(_)) => {
            errs.push(
                format!("{path}.post_promotion"),
                "only blue-green has a post-promotion watch; a canary's last step is its watch",
            );
            Duration::ZERO
        }
        (_, Some(d)) => d.0,
        (_, None) => Duration::ZERO,
    };
    let step_interval = duration(
        f.step_interval,
        DEFAULT_STEP_INTERVAL,
        &path,
        "step_interval",
        errs,
    );
    let on_failure = match f.on_failure.as_deref() {
        None | Some("rollback") => OnFailure::Rollback,
        Some("pause") => OnFailure::Pause,
        Some(other) => {
            errs.push(
                format!("{path}.on_failure"),
                format!("`{other}` is not an action; use `rollback` or `pause`"),
            );
            OnFailure::Rollback
        }
    };
    Some(RolloutSpec {
        strategy,
        stable: f.stable.clone(),
        canary: f.canary.clone(),
        steps,
        step_interval,
        post_promotion,
        gates: gates(&format!("{path}.gates"), &f.gates, errs),
        on_failure,
    })
}

fn check_steps(path: &str, steps: &[u32], errs: &mut Errors) {
    let path = format!("{path}.steps");
    if steps.is_empty() {
        errs.push(
            &path,
            "no steps: list canary weights, e.g. [5, 20, 50, 100]",
        );
    }
    for (i, &s) in steps.iter().enumerate() {
        if !(1..=100).contains(&s) {
            errs.push(
                format!("{path}[{i}]"),
                format!("{s} is not a canary weight; steps are percentages from 1 to 100"),
            );
        } else if i > 0 && s <= steps[i - 1] {
            errs.push(
                format!("{path}[{i}]"),
                format!(
                    "{s} does not grow from the step before ({}); steps must go up, e.g. [5, 20, 50, 100]",
                    steps[i - 1]
                ),
            );
        }
    }
}

fn rate(path: &str, key: &str, v: Option<f64>, errs: &mut Errors) -> Option<f64> {
    let v = v?;
    if !(0.0..=1.0).contains(&v) {
        errs.push(
            format!("{path}.{key}"),
            format!(
                "{v} is not a share of requests; write a number from 0 to 1, e.g. 0.01 for 1 %"
            ),
        );
    }
    Some(v)
}

fn gates(path: &str, f: &GatesFile, errs: &mut Errors) -> Gates {
    let max_error_rate =
        rate(path, "max_error_rate", f.max_error_rate, errs).unwrap_or(DEFAULT_MAX_ERROR_RATE);
    let abort_error_rate = rate(path, "abort_error_rate", f.abort_error_rate, errs)
        .unwrap_or((max_error_rate * ABORT_FACTOR).min(1.0));
    if f.abort_error_rate.is_some() && abort_error_rate <= max_error_rate {
        errs.push(
            format!("{path}.abort_error_rate"),
            format!(
                "{abort_error_rate} is not above max_error_rate ({max_error_rate}); the abort line must be past the gate, e.g. 5x it"
            ),
        );
    }
    let max_shadow_mismatch_rate = rate(
        path,
        "max_shadow_mismatch_rate",
        f.max_shadow_mismatch_rate,
        errs,
    );
    if let Some(r) = f.max_p99_ratio.filter(|r| !(*r >= 1.0 && r.is_finite())) {
        errs.push(
            format!("{path}.max_p99_ratio"),
            format!("{r} would fail a canary that is as fast as stable; write 1 or more, e.g. 1.5"),
        );
    }
    if f.max_p99_ms == Some(0) {
        errs.push(format!("{path}.max_p99_ms"), "must be at least 1");
    }
    if f.min_requests == Some(0) {
        errs.push(
            format!("{path}.min_requests"),
            "must be at least 1: a rollout never decides on no data",
        );
    }
    let min_requests = f.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS).max(1);
    Gates {
        min_requests,
        max_error_rate,
        max_p99_ms: f.max_p99_ms.unwrap_or(DEFAULT_MAX_P99_MS).max(1),
        max_p99_ratio: f.max_p99_ratio,
        abort_error_rate,
        abort_min_requests: f.abort_min_requests.unwrap_or(min_requests.min(100)).max(1),
        max_shadow_mismatch_rate,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    fn route(rollout: &str) -> String {
        format!(
            "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams:\n  a: {{ backends: [\"127.0.0.1:1\"] }}\n  b: {{ backends: [\"127.0.0.1:2\"] }}\n\
             routes:\n  - name: r\n    split: [{{ upstream: a, weight: 100 }}, {{ upstream: b, weight: 0 }}]\n    rollout: {rollout}\n"
        )
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse_str(&route("{ strategy: canary, stable: a, canary: b }")).unwrap();
        let s = c.routes[0].rollout.as_ref().unwrap();
        assert_eq!(s.steps, [5, 20, 50, 100]);
        assert_eq!(s.gates.max_error_rate, 0.01);
        assert_eq!(s.gates.abort_error_rate, 0.05);
        assert_eq!(s.gates.max_p99_ms, 500);
        assert_eq!(s.step_count(), 4);
    }

    #[test]
    fn every_rollout_error_has_its_path() {
        let errs = parse_str(&route(
            "{ strategy: canary, stable: a, canary: c, steps: [20, 10, 120], on_failure: explode, gates: { max_error_rate: 2, max_p99_ratio: 0.5 } }",
        ))
        .unwrap_err()
        .0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].rollout.canary",
                "routes[0].rollout.steps[1]",
                "routes[0].rollout.steps[2]",
                "routes[0].rollout.on_failure",
                "routes[0].rollout.gates.max_error_rate",
                "routes[0].rollout.gates.max_p99_ratio",
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn blue_green_has_no_steps_and_may_watch() {
        let c = parse_str(&route(
            "{ strategy: blue-green, stable: a, canary: b, post_promotion: 2s }",
        ))
        .unwrap();
        let s = c.routes[0].rollout.as_ref().unwrap();
        assert_eq!(s.steps, [0, 100]);
        assert_eq!(s.step_count(), 2);
        assert_eq!(s.min_duration(1).as_secs(), 2);
        let e = parse_str(&route(
            "{ strategy: blue-green, stable: a, canary: b, steps: [5] }",
        ))
        .unwrap_err();
        assert_eq!(e.0[0].path, "routes[0].rollout.steps");
    }

    #[test]
    fn the_fingerprint_follows_the_spec() {
        let a = parse_str(&route("{ strategy: canary, stable: a, canary: b }")).unwrap();
        let b = parse_str(&route("{ strategy: canary, stable: a, canary: b }")).unwrap();
        let c = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, steps: [10, 100] }",
        ))
        .unwrap();
        let fp = |c: &crate::config::Config| c.routes[0].rollout.as_ref().unwrap().fingerprint();
        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&c));
    }
}
