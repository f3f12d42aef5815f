//! The rollout policy, a pure function: a step's numbers in, a [`Decision`] out (its inputs,
//! thresholds, each gate's result, the verdict and a one-line reason). Nothing here reads a
//! clock or a socket, so every rule is unit-tested with plain numbers.

use std::time::Duration;

use serde::Serialize;

use crate::config::rollout::{Gates, OnFailure, RolloutSpec};
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
    /// The canary's most recent requests (at least `abort_min_requests` when there were that
    /// many): the abort rule looks here, not at the whole step, so a canary that turns bad late
    /// in a long healthy step is caught at once.
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
    /// Not enough time or data yet.
    Hold,
    Rollback,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateStatus {
    Pass,
    Fail,
    /// No data for it in this window (no stable traffic, no shadow compares) or not configured.
    NotApplicable,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    pub gate: &'static str,
    pub value: Option<f64>,
    pub limit: f64,
    pub status: GateStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub inputs: Inputs,
    pub thresholds: Gates,
    pub gates: Vec<GateResult>,
    pub verdict: Verdict,
    /// Decided by an abort rule, without waiting for the step to end.
    pub abort: bool,
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
            reason,
        }
    }
}

/// The abort rules, checked on every tick: a canary breaker opened, or the canary's recent
/// error rate is at or past `abort_error_rate` over enough requests.
pub fn abort_check(spec: &RolloutSpec, i: &Inputs) -> Option<Decision> {
    let g = &spec.gates;
    let reason = if i.breaker_opens > 0 {
        format!(
            "abort: a canary backend's circuit breaker opened ({} time{} this step)",
            i.breaker_opens,
            if i.breaker_opens == 1 { "" } else { "s" }
        )
    } else {
        let rate = i.recent.error_rate()?;
        if i.recent.requests < g.abort_min_requests || rate < g.abort_error_rate {
            return None;
        }
        format!(
            "abort: canary error rate {} over its last {} requests is at or past abort_error_rate {}",
            pct(rate),
            i.recent.requests,
            pct(g.abort_error_rate)
        )
    };
    let mut d = Decision::new(spec, *i, Verdict::Rollback, reason);
    d.abort = true;
    Some(d)
}

/// Evaluates a step: abort rules first, then Hold until the step's time and requests are in,
/// then every gate over the step's window.
pub fn evaluate(spec: &RolloutSpec, i: &Inputs) -> Decision {
    if let Some(d) = abort_check(spec, i) {
        return d;
    }
    let g = &spec.gates;
    let need = spec.min_duration(i.step);
    if i.elapsed < need {
        let reason = format!(
            "hold: step {} has run {:.1}s of its {:.1}s",
            i.step,
            i.elapsed.as_secs_f64(),
            need.as_secs_f64()
        );
        return Decision::new(spec, *i, Verdict::Hold, reason);
    }
    if i.canary.requests < g.min_requests {
        let reason = format!(
            "hold: too few canary requests to decide ({} of the {} needed)",
            i.canary.requests, g.min_requests
        );
        return Decision::new(spec, *i, Verdict::Hold, reason);
    }

    let gates = gate_results(g, i);
    let failed: Vec<String> = gates
        .iter()
        .filter(|r| r.status == GateStatus::Fail)
        .map(|r| {
            format!(
                "{} {} > {}",
                r.gate,
                fmt_value(r.gate, r.value.unwrap_or(0.0)),
                fmt_value(r.gate, r.limit)
            )
        })
        .collect();
    let last = i.step + 1 >= spec.step_count();
    let (verdict, reason) = if failed.is_empty() {
        let next = if last {
            "promoted".to_owned()
        } else {
            format!("step {} ({}%)", i.step + 1, spec.canary_weight(i.step + 1))
        };
        (
            Verdict::Promote,
            format!(
                "gates passed at step {} over {} canary requests: {next}",
                i.step, i.canary.requests
            ),
        )
    } else {
        let verdict = match spec.on_failure {
            OnFailure::Rollback => Verdict::Rollback,
            OnFailure::Pause => Verdict::Pause,
        };
        let what = if verdict == Verdict::Rollback {
            "rollback"
        } else {
            "pause"
        };
        (
            verdict,
            format!(
                "{what}: gate failed at step {}: {}",
                i.step,
                failed.join(", ")
            ),
        )
    };
    let mut d = Decision::new(spec, *i, verdict, reason);
    d.gates = gates;
    d
}

fn gate_results(g: &Gates, i: &Inputs) -> Vec<GateResult> {
    let check = |gate, value: Option<f64>, limit: Option<f64>| {
        let status = match (value, limit) {
            (Some(v), Some(l)) if v <= l => GateStatus::Pass,
            (Some(_), Some(_)) => GateStatus::Fail,
            _ => GateStatus::NotApplicable,
        };
        GateResult {
            gate,
            value,
            limit: limit.unwrap_or(0.0),
            status,
        }
    };
    let ratio = match (i.canary.p99_ms, i.stable.p99_ms) {
        (Some(c), Some(s)) if s > 0.0 && i.stable.requests > 0 => Some(c / s),
        _ => None,
    };
    let mismatch = g
        .max_shadow_mismatch_rate
        .and_then(|_| i.shadow.mismatch_rate());
    vec![
        check("error_rate", i.canary.error_rate(), Some(g.max_error_rate)),
        check("p99_ms", i.canary.p99_ms, Some(g.max_p99_ms as f64)),
        check("p99_ratio", ratio, g.max_p99_ratio),
        check("breaker_opens", Some(i.breaker_opens as f64), Some(0.0)),
        check("shadow_mismatch_rate", mismatch, g.max_shadow_mismatch_rate),
    ]
}

fn pct(r: f64) -> String {
    format!("{:.2}%", r * 100.0)
}

fn fmt_value(gate: &str, v: f64) -> String {
    match gate {
        "error_rate" | "shadow_mismatch_rate" => pct(v),
        "p99_ms" => format!("{v:.1}ms"),
        "p99_ratio" => format!("{v:.2}x"),
        _ => format!("{v}"),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
