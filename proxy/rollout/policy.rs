//! The rollout policy, pure: a step's numbers in, a [`Decision`] out (its inputs, thresholds,
//! each gate's test and result, the verdict and a one-line reason). Nothing here reads a clock
//! or a socket, so every rule is unit-tested with plain numbers, and the numbers may as well be
//! a fleet's sums as one replica's: everything is a function of cumulative counts.
//!
//! Every gate is a sequential test with a stated error rate ([`super::evidence`]): it fails
//! only when the data show the canary worse than its line at `gates.confidence`, passes only
//! when they show it is not, and is inconclusive otherwise. A step advances when every gate
//! passes, rolls back (or pauses, per `on_failure`) when one fails, and otherwise holds, up to
//! `max_step_duration`, after which `on_inconclusive` acts. The abort rule is the error-rate
//! test at `gates.abort_confidence`, run on every tick over the step and over windows started
//! later in it ([`abort_check`]).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::evidence::{self, Side, ln_add, ln_e};
use crate::config::rollout::{Gates, OnFailure, OnInconclusive, RolloutSpec};
use crate::stats::ShadowCounts;

/// What one arm did over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    pub requests: u64,
    /// Upstream failures: 5xx, timeouts, connect failures, resets.
    pub failures: u64,
    /// Time to the response head, 99th percentile, in ms; `None` without latency samples.
    pub p99_ms: Option<f64>,
}

impl Arm {
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures as f64 / self.requests as f64)
    }
}

/// With its error rate spelt out, so a decision record reads without arithmetic.
impl Serialize for Arm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Arm", 4)?;
        st.serialize_field("requests", &self.requests)?;
        st.serialize_field("failures", &self.failures)?;
        st.serialize_field("error_rate", &self.error_rate())?;
        st.serialize_field("p99_ms", &self.p99_ms)?;
        st.end()
    }
}

/// The numbers of one step so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Inputs {
    pub step: usize,
    /// Since the step began.
    #[serde(rename = "window_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
    pub canary: Arm,
    pub stable: Arm,
    /// Times a canary backend's breaker opened in the step.
    pub breaker_opens: u64,
    #[serde(serialize_with = "shadow_json")]
    pub shadow: ShadowCounts,
    /// The canary's requests in the window the abort rule judged on (an abort decision only).
    pub recent: Arm,
}

fn shadow_json<S: serde::Serializer>(c: &ShadowCounts, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Shadow", 3)?;
    st.serialize_field("compared", &c.compared)?;
    st.serialize_field("mismatched", &c.mismatched)?;
    st.serialize_field("mismatch_rate", &c.mismatch_rate())?;
    st.end()
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Next step, or Promoted after the last.
    Promote,
    /// Not enough time or evidence yet.
    Hold,
    Rollback,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateStatus {
    /// Shown not worse than the limit at the configured confidence.
    Pass,
    /// Shown worse than the limit at the configured confidence.
    Fail,
    /// Not shown either way yet.
    Inconclusive,
    /// No data for it in this window (no stable traffic, no shadow compares) or not configured.
    NotApplicable,
}

/// What a gate's test ran on, so the evidence still missing can be estimated by running it
/// again on more of the same.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    None,
    /// `x` events in `n` trials against `line`; `halve`: the test runs at half the error rate
    /// (the other half went to a bound on stable).
    Share {
        x: f64,
        n: f64,
        line: f64,
        halve: bool,
    },
    /// The canary's samples past `max_p99_ratio` times stable's p99 bounds: `worse` past the
    /// upper bound, `not_worse` past the lower, of `n`; each test at half the error rate.
    Latency {
        worse: f64,
        not_worse: f64,
        n: f64,
    },
    /// The canary's error rate against `ratio` times stable's, above `floor`.
    Relative {
        xc: f64,
        nc: f64,
        xs: f64,
        ns: f64,
        ratio: f64,
        floor: f64,
    },
}

impl Probe {
    /// (ln E that the canary is worse, ln E that it is not), the counts scaled by `k`.
    fn ln_e(&self, k: f64) -> (f64, f64) {
        (self.side(Side::Above, k), self.side(Side::Below, k))
    }

    /// ln E that the canary is worse (`Above`) or not (`Below`), the counts scaled by `k`.
    fn side(&self, side: Side, k: f64) -> f64 {
        match *self {
            Probe::None => 0.0,
            Probe::Share { x, n, line, halve } => {
                let cut = if halve { std::f64::consts::LN_2 } else { 0.0 };
                ln_e(side, x * k, n * k, line, evidence::first_above(line)) - cut
            }
            Probe::Latency {
                worse,
                not_worse,
                n,
            } => {
                let x = match side {
                    Side::Above => worse,
                    Side::Below => not_worse,
                };
                if x.is_nan() {
                    return f64::NEG_INFINITY;
                }
                ln_e(side, x * k, n * k, 0.01, evidence::first_above(0.01)) - std::f64::consts::LN_2
            }
            Probe::Relative {
                xc,
                nc,
                xs,
                ns,
                ratio,
                floor,
            } => relative(side, xc * k, nc * k, xs * k, ns * k, ratio, floor, None),
        }
    }
}

/// Canary against stable: the canary is worse when its error rate is more than `ratio` times
/// stable's **and** above `floor`; the two e-values combine as the minimum (both must be shown)
/// for worse (`Above`) and the mean (either suffices) for not worse (`Below`). The ratio is
/// tested on the canary's share of the two arms' failures, which, given their total, is
/// binomial whatever stable's rate is. `abort_from`: the abort rule's lowest alternative for
/// the floor test.
#[allow(clippy::too_many_arguments)]
fn relative(
    side: Side,
    xc: f64,
    nc: f64,
    xs: f64,
    ns: f64,
    ratio: f64,
    floor: f64,
    abort_from: Option<f64>,
) -> f64 {
    let share = nc / (nc + ns);
    let line = evidence::failure_share(ratio, share);
    let failures = xc + xs;
    match side {
        Side::Above => {
            let first = evidence::first_above(floor);
            let floor_first = abort_from.map_or(first, |a| a.max(first));
            let by_floor = ln_e(Side::Above, xc, nc, floor, floor_first);
            if by_floor == f64::NEG_INFINITY {
                return by_floor;
            }
            ln_e(Side::Above, xc, failures, line, evidence::first_above(line)).min(by_floor)
        }
        Side::Below => {
            ln_add(
                ln_e(Side::Below, xc, failures, line, 0.0),
                ln_e(Side::Below, xc, nc, floor, 0.0),
            ) - std::f64::consts::LN_2
        }
    }
}

/// Whether stable took enough of the two arms' traffic to compare with.
fn comparable(canary: u64, stable: u64) -> bool {
    stable > 0 && (canary as f64) < 0.999 * (canary + stable) as f64
}

/// The largest e-value a record shows (JSON has no infinity).
const E_CAP: f64 = 1e12;

fn e_value(ln_e: f64) -> f64 {
    let e = ln_e.min(E_CAP.ln()).exp();
    (e * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    pub gate: &'static str,
    /// The test behind the status.
    pub test: &'static str,
    /// What was observed (a rate, a p99, a ratio); `None` without data.
    pub value: Option<f64>,
    pub limit: f64,
    pub status: GateStatus,
    /// The test's statistic: the e-value that the canary is worse than the limit (capped at
    /// 1e12; 0 when the data lean the other way)...
    pub e_worse: f64,
    /// ...and that it is not.
    pub e_not_worse: f64,
    /// How sure the data make it that the canary is worse than the limit (`1 - 1/E`).
    pub confidence_worse: f64,
    /// How sure they make it that it is not.
    pub confidence_not_worse: f64,
    /// The evidence still missing, on recorded decisions: e.g. "need about 400 more canary
    /// requests (~8s at the current rate) to show it is not worse".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    #[serde(skip)]
    probe: Probe,
}

impl GateResult {
    fn new(gate: &'static str, test: &'static str, value: Option<f64>, limit: f64) -> Self {
        GateResult {
            gate,
            test,
            value,
            limit,
            status: GateStatus::NotApplicable,
            e_worse: 0.0,
            e_not_worse: 0.0,
            confidence_worse: 0.0,
            confidence_not_worse: 0.0,
            missing: None,
            probe: Probe::None,
        }
    }

    /// Runs `probe` and sets the status against `target` (the ln E a decision needs).
    fn tested(mut self, probe: Probe, target: f64) -> Self {
        let (worse, not_worse) = probe.ln_e(1.0);
        self.probe = probe;
        self.e_worse = e_value(worse);
        self.e_not_worse = e_value(not_worse);
        self.confidence_worse = evidence::confidence(worse);
        self.confidence_not_worse = evidence::confidence(not_worse);
        self.status = if worse >= target {
            GateStatus::Fail
        } else if not_worse >= target {
            GateStatus::Pass
        } else {
            GateStatus::Inconclusive
        };
        self
    }

    fn decided(mut self, pass: bool) -> Self {
        self.status = if pass {
            GateStatus::Pass
        } else {
            GateStatus::Fail
        };
        (self.confidence_worse, self.confidence_not_worse) =
            if pass { (0.0, 1.0) } else { (1.0, 0.0) };
        (self.e_worse, self.e_not_worse) = (
            if pass { 0.0 } else { E_CAP },
            if pass { E_CAP } else { 0.0 },
        );
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub inputs: Inputs,
    pub thresholds: Gates,
    pub gates: Vec<GateResult>,
    pub verdict: Verdict,
    /// Decided by an abort rule, without waiting for the step to end.
    pub abort: bool,
    /// Decided by `on_inconclusive`: `max_step_duration` passed without a decision.
    pub inconclusive: bool,
    pub reason: String,
}

impl Decision {
    fn new(spec: &RolloutSpec, inputs: Inputs, verdict: Verdict, reason: String) -> Decision {
        Decision {
            inputs,
            thresholds: spec.gates.clone(),
            gates: Vec::new(),
            verdict,
            abort: false,
            inconclusive: false,
            reason,
        }
    }
}

/// The gates that read counts: error rate against the limit and against stable, breaker
/// opens, shadow mismatches. Cheap enough for every tick.
pub fn count_gates(spec: &RolloutSpec, i: &Inputs) -> Vec<GateResult> {
    let g = &spec.gates;
    let target = evidence::ln_target(g.confidence);
    let (c, s) = (i.canary, i.stable);
    let error_rate = GateResult::new(
        "error_rate",
        "mixture SPRT on the canary's failures against max_error_rate",
        c.error_rate(),
        g.max_error_rate,
    )
    .tested(
        Probe::Share {
            x: c.failures as f64,
            n: c.requests as f64,
            line: g.max_error_rate,
            halve: false,
        },
        target,
    );
    let ratio_value = match (c.error_rate(), s.error_rate()) {
        (Some(rc), Some(rs)) if rs > 0.0 => Some(rc / rs),
        _ => None,
    };
    let mut error_ratio = GateResult::new(
        "error_ratio",
        "mixture SPRT on the canary's share of both arms' failures, and on its error rate against error_ratio_floor",
        ratio_value,
        g.max_error_ratio,
    );
    if comparable(c.requests, s.requests) {
        error_ratio = error_ratio.tested(
            Probe::Relative {
                xc: c.failures as f64,
                nc: c.requests as f64,
                xs: s.failures as f64,
                ns: s.requests as f64,
                ratio: g.max_error_ratio,
                floor: g.error_ratio_floor,
            },
            target,
        );
    }
    let breaker = GateResult::new(
        "breaker_opens",
        "any canary breaker opening",
        Some(i.breaker_opens as f64),
        0.0,
    )
    .decided(i.breaker_opens == 0);
    let mut shadow = GateResult::new(
        "shadow_mismatch_rate",
        "mixture SPRT on shadow answers that differ against max_shadow_mismatch_rate",
        g.max_shadow_mismatch_rate
            .and_then(|_| i.shadow.mismatch_rate()),
        g.max_shadow_mismatch_rate.unwrap_or(0.0),
    );
    if let Some(limit) = g.max_shadow_mismatch_rate
        && i.shadow.compared > 0
    {
        shadow = shadow.tested(
            Probe::Share {
                x: i.shadow.mismatched as f64,
                n: i.shadow.compared as f64,
                line: limit,
                halve: false,
            },
            target,
        );
    }
    vec![error_rate, error_ratio, breaker, shadow]
}

/// The latency gates over the step's window histograms (µs): the canary's p99 against the
/// `max_p99_ms` ceiling (p99 above the ceiling is the same as more than 1 % of requests slower
/// than it), and, with `max_p99_ratio`, against stable's p99: stable's p99 is bounded at half
/// the error rate (Howard & Ramdas' quantile bound), the canary's share of requests slower than
/// `max_p99_ratio` times that bound is tested at the other half. Returns the gates and the two
/// p99s in ms.
pub fn latency_gates(
    spec: &RolloutSpec,
    canary: &Histogram<u64>,
    stable: &Histogram<u64>,
) -> (Vec<GateResult>, Option<f64>, Option<f64>) {
    let g = &spec.gates;
    let target = evidence::ln_target(g.confidence);
    let p99 = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1e3);
    let (c99, s99) = (p99(canary), p99(stable));
    let n = canary.len() as f64;
    let mut ceiling = GateResult::new(
        "p99_ms",
        "mixture SPRT on the share of canary requests slower than max_p99_ms against 1%",
        c99,
        g.max_p99_ms as f64,
    );
    if n > 0.0 {
        let slow = evidence::count_above(canary, g.max_p99_ms as f64 * 1e3) as f64;
        ceiling = ceiling.tested(
            Probe::Share {
                x: slow,
                n,
                line: 0.01,
                halve: false,
            },
            target,
        );
    }
    let mut gates = vec![ceiling];
    if let Some(ratio) = g.max_p99_ratio {
        let value = match (c99, s99) {
            (Some(c), Some(s)) if s > 0.0 => Some(c / s),
            _ => None,
        };
        let mut vs = GateResult::new(
            "p99_ratio",
            "stable's p99 bounded by a quantile confidence sequence, then a mixture SPRT on the canary's share of requests slower than max_p99_ratio times that bound",
            value,
            ratio,
        );
        if n > 0.0 && !stable.is_empty() {
            let half = target + std::f64::consts::LN_2;
            let past = |bound: Option<u64>| {
                bound.map(|b| evidence::count_above(canary, ratio * b as f64) as f64)
            };
            // Worse is judged on the slow count past the upper bound, not worse on the count
            // past the lower bound; a bound stable's samples cannot give yet shows nothing (NaN).
            let upper = past(evidence::quantile_bound(stable, 0.99, Side::Below, half));
            let lower = past(evidence::quantile_bound(stable, 0.99, Side::Above, half));
            vs = vs.tested(
                Probe::Latency {
                    worse: upper.unwrap_or(f64::NAN),
                    not_worse: lower.unwrap_or(f64::NAN),
                    n,
                },
                target,
            );
        }
        gates.push(vs);
    }
    (gates, c99, s99)
}

/// The fewest canary requests a window of the abort rule must hold to count. The tests assume
/// requests fail independently; the first few requests to a canary (a backend still starting,
/// one reset taking several requests in flight with it) often do not, and two failures in two
/// requests would already be 99.9 % evidence. Bursts that short are the breakers' to judge.
pub const ABORT_MIN_WINDOW: u64 = 20;

/// One window of the abort rule: the canary's and stable's counts since the window began.
/// Window 0 is the whole step; window `j` began after the `j`-th `abort_min_requests` canary
/// requests of the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub index: u32,
    pub canary: Arm,
    pub stable: Arm,
}

/// The abort rules, checked on every tick (the engine skips ticks without a new canary
/// failure: without one no error-rate evidence can grow): a canary breaker opened, or the
/// canary is shown worse than `max_error_rate`, or than `max_error_ratio` times stable, at
/// `abort_confidence`. The evidence is a mixture over the step's windows with summable weights
/// ([`evidence::window_weight`]), each window's e-value the mean of its two tests, so a canary
/// that turns bad late in a long healthy step is judged on its recent requests and a canary
/// equal to stable is still aborted with probability at most `1 - abort_confidence`, however
/// long the step. The tests' alternatives start at `abort_error_rate`: the rule is built to
/// catch a canary at or past it within a few dozen requests. Windows of fewer than
/// [`ABORT_MIN_WINDOW`] canary requests do not count.
pub fn abort_check(spec: &RolloutSpec, i: &Inputs, windows: &[Window]) -> Option<Decision> {
    let g = &spec.gates;
    if i.breaker_opens > 0 {
        let reason = format!(
            "abort: a canary backend's circuit breaker opened ({} time{} this step)",
            i.breaker_opens,
            if i.breaker_opens == 1 { "" } else { "s" }
        );
        let mut d = Decision::new(spec, *i, Verdict::Rollback, reason);
        d.abort = true;
        return Some(d);
    }
    let target = evidence::ln_target(g.abort_confidence);
    // Each window's evidence is at most its likelihood ratio at the observed shares: when even
    // that cannot reach the target, skip the mixtures (most ticks of a healthy canary).
    let windows = windows
        .iter()
        .filter(|w| w.canary.requests >= ABORT_MIN_WINDOW);
    let bound = windows.clone().fold(f64::NEG_INFINITY, |acc, w| {
        let (c, s) = (w.canary, w.stable);
        let (xc, nc) = (c.failures as f64, c.requests as f64);
        let absolute = evidence::ln_bound_above(xc, nc, g.max_error_rate);
        let vs_stable = if comparable(c.requests, s.requests) {
            let line = evidence::failure_share(g.max_error_ratio, nc / (nc + s.requests as f64));
            evidence::ln_bound_above(xc, xc + s.failures as f64, line)
                .min(evidence::ln_bound_above(xc, nc, g.error_ratio_floor))
        } else {
            f64::NEG_INFINITY
        };
        ln_add(
            acc,
            evidence::window_weight(w.index).ln() + absolute.max(vs_stable),
        )
    });
    if bound < target {
        return None;
    }
    let from = g
        .abort_error_rate
        .max(evidence::first_above(g.max_error_rate));
    let mut total = f64::NEG_INFINITY;
    let mut best: Option<(f64, Window, bool)> = None;
    for w in windows {
        let (c, s) = (w.canary, w.stable);
        let absolute = ln_e(
            Side::Above,
            c.failures as f64,
            c.requests as f64,
            g.max_error_rate,
            from,
        );
        let vs_stable = comparable(c.requests, s.requests).then(|| {
            relative(
                Side::Above,
                c.failures as f64,
                c.requests as f64,
                s.failures as f64,
                s.requests as f64,
                g.max_error_ratio,
                g.error_ratio_floor,
                Some(g.abort_error_rate),
            )
        });
        let both = match vs_stable {
            Some(r) => ln_add(absolute, r) - std::f64::consts::LN_2,
            None => absolute,
        };
        let term = evidence::window_weight(w.index).ln() + both;
        total = ln_add(total, term);
        if best.is_none_or(|(t, ..)| term > t) {
            best = Some((term, *w, vs_stable.is_some_and(|r| r > absolute)));
        }
    }
    let (_, w, by_ratio) = best?;
    if total < target {
        return None;
    }
    let sure = evidence::confidence(total);
    let rate = w.canary.error_rate().unwrap_or(0.0);
    let what = if by_ratio {
        format!(
            "more than {}x stable's {} over the same time",
            trim(g.max_error_ratio),
            pct(w.stable.error_rate().unwrap_or(0.0))
        )
    } else {
        format!("past max_error_rate {}", pct(g.max_error_rate))
    };
    let reason = format!(
        "abort: canary error rate {} over its last {} requests is {what}: {} sure ({} needed; mixture SPRT over the step's windows)",
        pct(rate),
        w.canary.requests,
        pct_sure(sure),
        pct_sure(g.abort_confidence),
    );
    let mut inputs = *i;
    inputs.recent = w.canary;
    let mut d = Decision::new(spec, inputs, Verdict::Rollback, reason);
    d.abort = true;
    let mut gate = GateResult::new(
        if by_ratio {
            "error_ratio"
        } else {
            "error_rate"
        },
        "mixture SPRT over the step's windows (abort rule)",
        Some(rate),
        g.max_error_rate,
    );
    gate.status = GateStatus::Fail;
    gate.e_worse = e_value(total);
    gate.confidence_worse = sure;
    d.gates.push(gate);
    Some(d)
}

/// The verdict of a step given its gates: every gate passed -> Promote, one failed ->
/// `on_failure`, otherwise Hold until `max_step_duration`, then `on_inconclusive`. Returns the
/// verdict and whether `on_inconclusive` decided it.
pub fn verdict(spec: &RolloutSpec, i: &Inputs, gates: &[GateResult]) -> (Verdict, bool) {
    if i.elapsed < spec.min_duration(i.step) {
        return (Verdict::Hold, false);
    }
    let enough = i.canary.requests >= spec.gates.min_requests;
    if enough && gates.iter().any(|g| g.status == GateStatus::Fail) {
        return (
            match spec.on_failure {
                OnFailure::Rollback => Verdict::Rollback,
                OnFailure::Pause => Verdict::Pause,
            },
            false,
        );
    }
    if enough
        && gates
            .iter()
            .all(|g| matches!(g.status, GateStatus::Pass | GateStatus::NotApplicable))
    {
        return (Verdict::Promote, false);
    }
    if i.elapsed >= spec.max_step_duration {
        let v = match spec.on_inconclusive {
            OnInconclusive::Pause => Verdict::Pause,
            OnInconclusive::Rollback => Verdict::Rollback,
            OnInconclusive::Promote => Verdict::Promote,
        };
        return (v, true);
    }
    (Verdict::Hold, false)
}

/// The record of a step verdict: the gates with the evidence each still misses, and a reason
/// that names the deciding (or undecided) gates, their tests' confidence and what is missing.
pub fn decide(
    spec: &RolloutSpec,
    i: &Inputs,
    mut gates: Vec<GateResult>,
    verdict: Verdict,
    inconclusive: bool,
) -> Decision {
    let g = &spec.gates;
    let target = evidence::ln_target(g.confidence);
    let rate = i.canary.requests as f64 / i.elapsed.as_secs_f64().max(1e-3);
    for gate in &mut gates {
        if gate.status == GateStatus::Inconclusive {
            gate.missing = Some(missing(gate, target, rate));
        }
    }
    let need = spec.min_duration(i.step);
    let last = i.step + 1 >= spec.step_count();
    let next = if last {
        "promoted".to_owned()
    } else {
        format!("step {} ({}%)", i.step + 1, spec.canary_weight(i.step + 1))
    };
    let undecided = || {
        gates
            .iter()
            .filter(|r| r.status == GateStatus::Inconclusive)
            .map(|r| {
                format!(
                    "{} {} vs {} ({} sure it is not worse, {} that it is; {})",
                    r.gate,
                    shown(r, i),
                    fmt_value(r.gate, r.limit),
                    pct_sure(r.confidence_not_worse),
                    pct_sure(r.confidence_worse),
                    r.missing.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let reason = if i.elapsed < need {
        format!(
            "hold: step {} has run {:.1}s of its {:.1}s",
            i.step,
            i.elapsed.as_secs_f64(),
            need.as_secs_f64()
        )
    } else if inconclusive {
        let why = if i.canary.requests < g.min_requests {
            format!(
                "too few canary requests ({} of the {} needed)",
                i.canary.requests, g.min_requests
            )
        } else {
            undecided()
        };
        let action = match verdict {
            Verdict::Promote => format!("promote anyway: {next}"),
            Verdict::Rollback => "rollback".to_owned(),
            _ => "pause for an operator".to_owned(),
        };
        format!(
            "inconclusive: step {} not decided in max_step_duration {:.0}s at {} confidence: {why}; on_inconclusive: {action}",
            i.step,
            spec.max_step_duration.as_secs_f64(),
            pct_sure(g.confidence)
        )
    } else {
        match verdict {
            Verdict::Hold if i.canary.requests < g.min_requests => format!(
                "hold: too few canary requests to decide ({} of the {} needed)",
                i.canary.requests, g.min_requests
            ),
            Verdict::Hold => format!(
                "hold: step {} not shown either way at {} confidence after {:.1}s: {}",
                i.step,
                pct_sure(g.confidence),
                i.elapsed.as_secs_f64(),
                undecided()
            ),
            Verdict::Promote => format!(
                "gates passed at step {} over {} canary requests: {next} (each shown not worse at {} confidence)",
                i.step,
                i.canary.requests,
                pct_sure(g.confidence)
            ),
            Verdict::Rollback | Verdict::Pause => {
                let failed: Vec<String> = gates
                    .iter()
                    .filter(|r| r.status == GateStatus::Fail)
                    .map(|r| {
                        format!(
                            "{} {} > {} ({} sure; {})",
                            r.gate,
                            shown(r, i),
                            fmt_value(r.gate, r.limit),
                            pct_sure(r.confidence_worse),
                            r.test
                        )
                    })
                    .collect();
                let what = if verdict == Verdict::Rollback {
                    "rollback"
                } else {
                    "pause"
                };
                format!(
                    "{what}: gate failed at step {} at {} confidence: {}",
                    i.step,
                    pct_sure(g.confidence),
                    failed.join(", ")
                )
            }
        }
    };
    let mut d = Decision::new(spec, *i, verdict, reason);
    d.gates = gates;
    d.inconclusive = inconclusive;
    d
}

/// Evaluates a step in one go: abort rules over the whole step, then the gates (with
/// `latency`, the latency gates read from histograms, if any) and the verdict.
pub fn evaluate(spec: &RolloutSpec, i: &Inputs, latency: &[GateResult]) -> Decision {
    let step = Window {
        index: 0,
        canary: i.canary,
        stable: i.stable,
    };
    if let Some(d) = abort_check(spec, i, &[step]) {
        return d;
    }
    let mut gates = count_gates(spec, i);
    gates.extend_from_slice(latency);
    let (verdict, inconclusive) = verdict(spec, i, &gates);
    decide(spec, i, gates, verdict, inconclusive)
}

/// "need about 400 more canary requests (~8s at the current rate) to show it is not worse", or
/// why no amount would do.
fn missing(gate: &GateResult, target: f64, rate: f64) -> String {
    let (worse, not_worse) = gate.probe.ln_e(1.0);
    let (side, name) = if not_worse >= worse {
        (Side::Below, "not worse")
    } else {
        (Side::Above, "worse")
    };
    let (unit, now) = match gate.probe {
        Probe::Share { n, .. } if gate.gate == "shadow_mismatch_rate" => ("shadow compares", n),
        Probe::Share { n, .. } | Probe::Latency { n, .. } => ("canary requests", n),
        Probe::Relative { nc, .. } => ("canary requests", nc),
        Probe::None => return String::new(),
    };
    match evidence::scale_needed(|k| gate.probe.side(side, k), target) {
        _ if now <= 0.0 => format!("no {unit} yet"),
        Some(k) => {
            let more = ((k - 1.0) * now).ceil().max(1.0);
            let eta = if unit == "canary requests" && rate > 0.0 {
                format!(" (~{:.0}s at the current rate)", more / rate)
            } else {
                String::new()
            };
            format!(
                "need about {} more {unit}{eta} to show it is {name}",
                round_need(more)
            )
        }
        None => "at these rates no amount of data decides: the canary sits on the line".to_owned(),
    }
}

/// 437 -> 440, 12345 -> 12000: an estimate, not a promise.
fn round_need(n: f64) -> u64 {
    let digits = n.log10().floor() as i32;
    let unit = 10f64.powi((digits - 1).max(0));
    ((n / unit).ceil() * unit) as u64
}

fn pct(r: f64) -> String {
    format!("{:.2}%", r * 100.0)
}

/// 0.95 -> "95%", 0.999 -> "99.9%".
fn pct_sure(c: f64) -> String {
    let p = c * 100.0;
    if (99.0..100.0).contains(&p) {
        format!("{}%", trim((p * 100.0).floor() / 100.0))
    } else {
        format!("{}%", trim((p * 10.0).floor() / 10.0))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A gate's observed value for a reason; the ratio to stable with both rates, since a ratio to
/// a stable without failures has no finite value.
fn shown(r: &GateResult, i: &Inputs) -> String {
    let value = r.value.map_or("n/a".to_owned(), |v| fmt_value(r.gate, v));
    if r.gate == "error_ratio" {
        let rate = |a: &Arm| pct(a.error_rate().unwrap_or(0.0));
        let value = r.value.map_or("inf".to_owned(), |v| fmt_value(r.gate, v));
        return format!(
            "{value} (canary {} vs stable {})",
            rate(&i.canary),
            rate(&i.stable)
        );
    }
    value
}

fn fmt_value(gate: &str, v: f64) -> String {
    match gate {
        "error_rate" | "shadow_mismatch_rate" => pct(v),
        "p99_ms" => format!("{v:.1}ms"),
        "p99_ratio" | "error_ratio" => format!("{v:.2}x"),
        _ => format!("{v}"),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
