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
    /// How long a step may hold for lack of evidence before `on_inconclusive` acts.
    pub max_step_duration: Option<DurationStr>,
    pub on_inconclusive: Option<String>,
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
    pub confidence: Option<f64>,
    pub abort_confidence: Option<f64>,
    pub max_error_ratio: Option<f64>,
    pub error_ratio_floor: Option<f64>,
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

/// What a step does when `max_step_duration` passes and its tests have decided nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInconclusive {
    /// Hold the step's weights for an operator (Argo Rollouts does the same with an
    /// inconclusive analysis).
    Pause,
    Rollback,
    /// Go on as if the step had passed: absence of evidence taken as good enough.
    Promote,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gates {
    /// Canary requests a step needs before any verdict but Hold.
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: u64,
    pub max_p99_ratio: Option<f64>,
    /// The error rate the abort test is built to catch fastest: its alternatives start here.
    /// Canaries between `max_error_rate` and this are left to the step's test.
    pub abort_error_rate: f64,
    /// The abort test starts a new window every this many canary requests, so a canary that
    /// turns bad late in a long step is judged on its recent requests.
    pub abort_min_requests: u64,
    pub max_shadow_mismatch_rate: Option<f64>,
    /// A step rolls back (or advances) once its tests show the canary worse (or not worse) at
    /// this confidence.
    pub confidence: f64,
    /// The abort test acts at this confidence, on every tick.
    pub abort_confidence: f64,
    /// Worse than stable means an error rate more than this many times stable's...
    pub max_error_ratio: f64,
    /// ...and above this: differences below it are not held against the canary.
    pub error_ratio_floor: f64,
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
    #[serde(with = "millis")]
    pub max_step_duration: Duration,
    pub on_inconclusive: OnInconclusive,
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
    /// Keys added since the first version count only when they differ from their defaults, so
    /// a config written before them keeps its fingerprint (and its rollout) across an upgrade.
    pub fn fingerprint(&self) -> String {
        let mut text = serde_json::to_string(&FirstVersion(self)).unwrap_or_default();
        let defaults = Defaults::of(
            self.step_interval,
            self.post_promotion,
            self.gates.max_error_rate,
        );
        let g = &self.gates;
        let added = [
            (
                "max_step_duration",
                self.max_step_duration != defaults.max_step_duration,
                self.max_step_duration.as_millis() as f64,
            ),
            (
                "on_inconclusive",
                self.on_inconclusive != OnInconclusive::Pause,
                self.on_inconclusive as u8 as f64,
            ),
            (
                "confidence",
                g.confidence != DEFAULT_CONFIDENCE,
                g.confidence,
            ),
            (
                "abort_confidence",
                g.abort_confidence != DEFAULT_ABORT_CONFIDENCE,
                g.abort_confidence,
            ),
            (
                "max_error_ratio",
                g.max_error_ratio != DEFAULT_MAX_ERROR_RATIO,
                g.max_error_ratio,
            ),
            (
                "error_ratio_floor",
                g.error_ratio_floor != defaults.error_ratio_floor,
                g.error_ratio_floor,
            ),
        ];
        for (key, changed, value) in added {
            if changed {
                text.push_str(&format!(",{key}={value}"));
            }
        }
        // FNV-1a: stable across runs and builds, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// The spec as the first version serialized it (field order and all), for [`RolloutSpec::fingerprint`].
struct FirstVersion<'a>(&'a RolloutSpec);

impl Serialize for FirstVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = self.0;
        let mut st = s.serialize_struct("RolloutSpec", 8)?;
        st.serialize_field("strategy", &r.strategy)?;
        st.serialize_field("stable", &r.stable)?;
        st.serialize_field("canary", &r.canary)?;
        st.serialize_field("steps", &r.steps)?;
        st.serialize_field("step_interval", &(r.step_interval.as_millis() as u64))?;
        st.serialize_field("post_promotion", &(r.post_promotion.as_millis() as u64))?;
        st.serialize_field("gates", &FirstGates(&r.gates))?;
        st.serialize_field("on_failure", &r.on_failure)?;
        st.end()
    }
}

struct FirstGates<'a>(&'a Gates);

impl Serialize for FirstGates<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let g = self.0;
        let mut st = s.serialize_struct("Gates", 7)?;
        st.serialize_field("min_requests", &g.min_requests)?;
        st.serialize_field("max_error_rate", &g.max_error_rate)?;
        st.serialize_field("max_p99_ms", &g.max_p99_ms)?;
        st.serialize_field("max_p99_ratio", &g.max_p99_ratio)?;
        st.serialize_field("abort_error_rate", &g.abort_error_rate)?;
        st.serialize_field("abort_min_requests", &g.abort_min_requests)?;
        st.serialize_field("max_shadow_mismatch_rate", &g.max_shadow_mismatch_rate)?;
        st.end()
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
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
pub const DEFAULT_ABORT_CONFIDENCE: f64 = 0.999;
pub const DEFAULT_MAX_ERROR_RATIO: f64 = 2.0;
/// `error_ratio_floor` is `max_error_rate` over this, unless set.
pub const FLOOR_DIVISOR: f64 = 4.0;
/// `max_step_duration` is this many step intervals (or post-promotion watches)...
pub const MAX_STEP_FACTOR: u32 = 10;
/// ...and at least this long, unless set.
pub const MIN_MAX_STEP_DURATION: Duration = Duration::from_secs(600);

/// The defaults that follow from other keys.
struct Defaults {
    max_step_duration: Duration,
    error_ratio_floor: f64,
}

impl Defaults {
    fn of(step_interval: Duration, post_promotion: Duration, max_error_rate: f64) -> Defaults {
        Defaults {
            max_step_duration: (step_interval.max(post_promotion) * MAX_STEP_FACTOR)
                .max(MIN_MAX_STEP_DURATION),
            error_ratio_floor: max_error_rate / FLOOR_DIVISOR,
        }
    }
}

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
    let on_inconclusive = match f.on_inconclusive.as_deref() {
        None | Some("pause") => OnInconclusive::Pause,
        Some("rollback") => OnInconclusive::Rollback,
        Some("promote") => OnInconclusive::Promote,
        Some(other) => {
            errs.push(
                format!("{path}.on_inconclusive"),
                format!("`{other}` is not an action; use `pause`, `rollback` or `promote`"),
            );
            OnInconclusive::Pause
        }
    };
    let gates = gates(&format!("{path}.gates"), &f.gates, errs);
    let defaults = Defaults::of(step_interval, post_promotion, gates.max_error_rate);
    let longest = step_interval.max(post_promotion);
    let max_step_duration = match f.max_step_duration {
        Some(d) if d.0 < longest => {
            errs.push(
                format!("{path}.max_step_duration"),
                format!(
                    "{} is shorter than a step's least time ({}); a step cannot give up before it may decide: write at least that, e.g. {}",
                    fmt_duration(d.0),
                    fmt_duration(longest),
                    fmt_duration(defaults.max_step_duration)
                ),
            );
            defaults.max_step_duration
        }
        Some(d) => d.0,
        None => defaults.max_step_duration,
    };
    Some(RolloutSpec {
        strategy,
        stable: f.stable.clone(),
        canary: f.canary.clone(),
        steps,
        step_interval,
        post_promotion,
        gates,
        on_failure,
        max_step_duration,
        on_inconclusive,
    })
}

/// `90s` as `1m30s`, for messages.
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60, d.subsec_millis()) {
        (0, 0, ms) => format!("{ms}ms"),
        (0, s, 0) => format!("{s}s"),
        (m, 0, 0) => format!("{m}m"),
        (m, s, _) => format!("{m}m{s}s"),
    }
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
    let level = |key: &str, v: Option<f64>, errs: &mut Errors| {
        let v = v?;
        if !(0.5..1.0).contains(&v) {
            errs.push(
                format!("{path}.{key}"),
                format!("{v} is not a confidence; write a number from 0.5 up to (not including) 1, e.g. 0.95 for 95 %"),
            );
            return None;
        }
        Some(v)
    };
    let written = level("confidence", f.confidence, errs);
    let confidence = written.unwrap_or(DEFAULT_CONFIDENCE);
    let abort_confidence = level("abort_confidence", f.abort_confidence, errs)
        .unwrap_or(DEFAULT_ABORT_CONFIDENCE.max(confidence));
    // Compared only with a confidence that is valid as written (or the default).
    if abort_confidence < confidence && (f.confidence.is_none() || written.is_some()) {
        errs.push(
            format!("{path}.abort_confidence"),
            format!("{abort_confidence} is below confidence ({confidence}); the abort rule acts without waiting for the step, so it must be at least as sure, e.g. 0.999"),
        );
    }
    if let Some(r) = f.max_error_ratio.filter(|r| !(*r >= 1.0 && r.is_finite())) {
        errs.push(
            format!("{path}.max_error_ratio"),
            format!("{r} would fail a canary exactly as good as stable; write 1 or more, e.g. 2"),
        );
    }
    let error_ratio_floor = rate(path, "error_ratio_floor", f.error_ratio_floor, errs)
        .unwrap_or(max_error_rate / FLOOR_DIVISOR);
    Gates {
        min_requests,
        max_error_rate,
        max_p99_ms: f.max_p99_ms.unwrap_or(DEFAULT_MAX_P99_MS).max(1),
        max_p99_ratio: f.max_p99_ratio,
        abort_error_rate,
        abort_min_requests: f.abort_min_requests.unwrap_or(min_requests.min(100)).max(1),
        max_shadow_mismatch_rate,
        confidence,
        abort_confidence,
        max_error_ratio: f
            .max_error_ratio
            .filter(|r| *r >= 1.0 && r.is_finite())
            .unwrap_or(DEFAULT_MAX_ERROR_RATIO),
        error_ratio_floor,
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
    fn new_keys_have_defaults_and_every_bad_value_its_path() {
        let c = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, step_interval: 5s }",
        ))
        .unwrap();
        let s = c.routes[0].rollout.as_ref().unwrap();
        assert_eq!(
            (s.gates.confidence, s.gates.abort_confidence),
            (0.95, 0.999)
        );
        assert_eq!(s.gates.max_error_ratio, 2.0);
        assert_eq!(s.gates.error_ratio_floor, 0.0025);
        assert_eq!(
            s.max_step_duration.as_secs(),
            600,
            "10 min: more than 10 intervals of 5s"
        );
        assert_eq!(s.on_inconclusive, super::OnInconclusive::Pause);
        let c = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, step_interval: 2m }",
        ))
        .unwrap();
        let s = c.routes[0].rollout.as_ref().unwrap();
        assert_eq!(s.max_step_duration.as_secs(), 1200, "10 intervals");

        let errs = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, step_interval: 1m, max_step_duration: 30s, on_inconclusive: shrug, gates: { confidence: 95, abort_confidence: 0.9, max_error_ratio: 0.5, error_ratio_floor: -1 } }",
        ))
        .unwrap_err()
        .0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].rollout.on_inconclusive",
                "routes[0].rollout.gates.confidence",
                "routes[0].rollout.gates.max_error_ratio",
                "routes[0].rollout.gates.error_ratio_floor",
                "routes[0].rollout.max_step_duration",
            ],
            "{errs:#?}"
        );
        let e = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, gates: { confidence: 0.99, abort_confidence: 0.95 } }",
        ))
        .unwrap_err();
        assert_eq!(e.0[0].path, "routes[0].rollout.gates.abort_confidence");
        assert!(
            e.0[0].message.contains("at least as sure"),
            "{}",
            e.0[0].message
        );
    }

    #[test]
    fn a_config_written_before_the_new_keys_keeps_its_fingerprint() {
        // What the first version computed for this spec: an upgrade resumes its rollout.
        let c = parse_str(&route("{ strategy: canary, stable: a, canary: b }")).unwrap();
        assert_eq!(
            c.routes[0].rollout.as_ref().unwrap().fingerprint(),
            "5179adc19ff904c9"
        );
        // The defaults written out are the same spec; another value is another spec.
        let same = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, on_inconclusive: pause, max_step_duration: 10m, gates: { confidence: 0.95, error_ratio_floor: 0.0025 } }",
        ))
        .unwrap();
        assert_eq!(
            same.routes[0].rollout.as_ref().unwrap().fingerprint(),
            "5179adc19ff904c9"
        );
        let other = parse_str(&route(
            "{ strategy: canary, stable: a, canary: b, gates: { confidence: 0.9 } }",
        ))
        .unwrap();
        assert_ne!(
            other.routes[0].rollout.as_ref().unwrap().fingerprint(),
            "5179adc19ff904c9"
        );
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
