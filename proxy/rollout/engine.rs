//! One route's rollout: its state, the window of the step it is at, the decisions it made. It
//! is fed readings and the time by the controller and answers with state changes; it reads no
//! clock and does no I/O itself (so its timing is unit-tested on tokio's paused clock).
//!
//! Everything it keeps is made of the cumulative readings it was fed (the step's base, the
//! starts of the abort rule's windows), so a fleet's summed counters drive it as well as one
//! replica's, and a new leader that starts feeding it starts a fresh, valid window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::journal::{Entry, Saved};
use super::machine::{self, IllegalTransition, State};
use super::policy::{self, Arm, Decision, GateResult, GateStatus, Inputs, Verdict, Window};
use crate::config::rollout::RolloutSpec;
use crate::stats::ShadowCounts;

/// Decisions and transitions kept for `GET /rollouts/{route}`.
const KEEP_DECISIONS: usize = 10;
const KEEP_HISTORY: usize = 50;
/// Windows the abort rule looks at besides the whole step: the latest ones. Dropping older
/// windows only lowers the evidence, so the rule's error rate still holds.
const KEEP_WINDOWS: usize = 12;
/// How often a step's tests run once the step may decide (the abort rule runs on every tick):
/// a step verdict a second late costs nothing.
const EVALUATE_EVERY: Duration = Duration::from_secs(1);
/// How often the latency gates are read from the histograms meanwhile (reading them merges
/// every worker's histograms); at once, though, when every other gate has passed.
const LATENCY_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
}

impl Counts {
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            failures: self.failures.saturating_sub(earlier.failures),
        }
    }

    fn arm(self, p99_ms: Option<f64>) -> Arm {
        Arm {
            requests: self.requests,
            failures: self.failures,
            p99_ms,
        }
    }
}

/// Cumulative readings of a route's two arms at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub canary: Counts,
    pub stable: Counts,
    /// Breaker opens summed over the canary's backends.
    pub breaker_opens: u64,
    pub shadow: ShadowCounts,
}

/// Cumulative latency histograms of (canary, stable); read at the start of a step and then
/// every few seconds while it may decide, never on every tick.
pub type Latency = (Histogram<u64>, Histogram<u64>);

#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub time_ms: u64,
    #[serde(flatten)]
    pub decision: Decision,
}

/// A state change for the controller to apply (weights), journal and log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Promote,
    Pause,
    Resume,
    Abort,
}

/// When the latency gates were read, their results and the two arms' p99s (ms).
struct LatencyRead {
    at: Instant,
    gates: Vec<GateResult>,
    canary_p99: Option<f64>,
    stable_p99: Option<f64>,
}

pub struct Rollout {
    pub route: Arc<str>,
    pub spec: Arc<RolloutSpec>,
    pub fingerprint: String,
    pub state: State,
    step_started: Instant,
    base: Option<(Sample, Latency)>,
    /// The abort rule's windows after the whole step: their index and the reading they began at.
    windows: VecDeque<(u32, Sample)>,
    /// Canary failures at the last abort check: its evidence grows only with a new one.
    checked_failures: Option<u64>,
    /// The latency gates as last read.
    latency_gates: Option<LatencyRead>,
    /// When the step's tests last ran.
    evaluated: Option<Instant>,
    pub decisions: VecDeque<Stamped>,
    pub history: VecDeque<Entry>,
    last_hold: Option<Instant>,
}

impl Rollout {
    pub fn new(route: Arc<str>, spec: Arc<RolloutSpec>, now: Instant) -> Rollout {
        Rollout {
            fingerprint: spec.fingerprint(),
            route,
            spec,
            state: State::Pending,
            step_started: now,
            base: None,
            windows: VecDeque::new(),
            checked_failures: None,
            latency_gates: None,
            evaluated: None,
            decisions: VecDeque::new(),
            history: VecDeque::new(),
            last_hold: None,
        }
    }

    /// Picks up a saved rollout of the same spec; its step starts a fresh window.
    pub fn restore(route: Arc<str>, spec: Arc<RolloutSpec>, saved: &Saved, now: Instant) -> Self {
        let mut r = Rollout::new(route, spec, now);
        if saved.fingerprint == r.fingerprint
            && saved.state.step().is_none_or(|s| s < r.spec.step_count())
        {
            r.state = saved.state;
            r.history = saved.history.iter().cloned().collect();
        }
        r
    }

    pub fn saved(&self) -> Saved {
        Saved {
            fingerprint: self.fingerprint.clone(),
            state: self.state,
            history: self.history.iter().cloned().collect(),
        }
    }

    /// The canary's share (of the 100 it shares with stable) in the current state.
    pub fn canary_weight(&self) -> u32 {
        match self.state {
            State::Pending => self.spec.canary_weight(0),
            State::Progressing { step } | State::Paused { step } => self.spec.canary_weight(step),
            State::Promoted => 100,
            State::RolledBack | State::Aborted | State::Held => 0,
        }
    }

    /// The route's split weights for the current state: stable and canary share 100, other
    /// upstreams of the split keep their configured weight.
    pub fn weights(&self, split: &[(&str, u32)]) -> Vec<u32> {
        let canary = self.canary_weight();
        split
            .iter()
            .map(|&(name, configured)| {
                if name == self.spec.canary {
                    canary
                } else if name == self.spec.stable {
                    100 - canary
                } else {
                    configured
                }
            })
            .collect()
    }

    pub fn step_elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.step_started)
    }

    /// Moves to `to` if that is legal; a new step (or a resumed one) starts a fresh window.
    pub fn transition(
        &mut self,
        to: State,
        reason: String,
        now: Instant,
    ) -> Result<Change, IllegalTransition> {
        machine::check(self.state, to, self.spec.step_count())?;
        let from = std::mem::replace(&mut self.state, to);
        if !matches!(to, State::Paused { .. }) {
            self.step_started = now;
            self.base = None;
            self.windows.clear();
            self.checked_failures = None;
            self.latency_gates = None;
            self.evaluated = None;
            self.last_hold = None;
        }
        Ok(Change { from, to, reason })
    }

    /// Starts judging a step that began before this engine did (a new fleet leader): `base` is
    /// what was counted before the step began, so the step's tests run on all of its counts,
    /// exactly as the engine that judged it before would have. Nothing is evaluated until the
    /// next [`Rollout::observe`] brings the counts so far.
    pub fn prime(&mut self, base: Sample, latency: Latency) {
        self.base = Some((base, latency));
    }

    /// One tick: starts a pending rollout, checks the abort rules, and evaluates the step once
    /// its time is in, then at most every [`EVALUATE_EVERY`]. `latency` is called at the start
    /// of a step, then every [`LATENCY_EVERY`] (every evaluation once the other gates pass).
    pub fn observe(
        &mut self,
        now: Instant,
        time_ms: u64,
        sample: Sample,
        latency: impl Fn() -> Latency,
    ) -> Option<Change> {
        let step = match self.state {
            State::Pending => {
                return self
                    .transition(
                        State::Progressing { step: 0 },
                        "rollout started".into(),
                        now,
                    )
                    .ok();
            }
            State::Progressing { step } | State::Paused { step } => step,
            _ => return None,
        };
        let elapsed = self.step_elapsed(now);
        let base = self.base.get_or_insert_with(|| (sample, latency())).0;
        let block = self.spec.gates.abort_min_requests;
        let last_start = self.windows.back().map_or(base, |w| w.1);
        if sample
            .canary
            .requests
            .saturating_sub(last_start.canary.requests)
            >= block
        {
            let j = self.windows.back().map_or(1, |w| w.0 + 1);
            self.windows.push_back((j, sample));
            if self.windows.len() > KEEP_WINDOWS {
                self.windows.pop_front();
            }
        }
        let mut inputs = Inputs {
            step,
            elapsed,
            canary: sample.canary.since(base.canary).arm(None),
            stable: sample.stable.since(base.stable).arm(None),
            breaker_opens: sample.breaker_opens.saturating_sub(base.breaker_opens),
            shadow: sample.shadow.since(base.shadow),
            recent: Arm::default(),
        };
        let fresh_failure = self
            .checked_failures
            .is_none_or(|f| sample.canary.failures > f);
        if inputs.breaker_opens > 0 || fresh_failure {
            self.checked_failures = Some(sample.canary.failures);
            let windows: Vec<Window> = std::iter::once((0, base))
                .chain(self.windows.iter().copied())
                .map(|(index, start)| Window {
                    index,
                    canary: sample.canary.since(start.canary).arm(None),
                    stable: sample.stable.since(start.stable).arm(None),
                })
                .collect();
            if let Some(d) = policy::abort_check(&self.spec, &inputs, &windows) {
                let reason = d.reason.clone();
                self.remember(time_ms, d);
                return self.transition(State::RolledBack, reason, now).ok();
            }
        }
        if matches!(self.state, State::Paused { .. }) || elapsed < self.spec.min_duration(step) {
            return None;
        }
        if self
            .evaluated
            .is_some_and(|t| now.saturating_duration_since(t) < EVALUATE_EVERY)
        {
            return None;
        }
        self.evaluated = Some(now);
        let mut gates = policy::count_gates(&self.spec, &inputs);
        let others_passed = gates
            .iter()
            .all(|g| matches!(g.status, GateStatus::Pass | GateStatus::NotApplicable));
        let stale = self.latency_gates.as_ref().is_none_or(|l| {
            let age = now.saturating_duration_since(l.at);
            age >= LATENCY_EVERY || (others_passed && age >= EVALUATE_EVERY)
        });
        if stale {
            let (canary, stable) = latency();
            let base_latency = self.base.as_ref().map(|b| &b.1);
            let window = |now: Histogram<u64>, base: Option<&Histogram<u64>>| {
                let mut w = now;
                if let Some(b) = base
                    && w.subtract(b).is_err()
                {
                    w.reset();
                }
                w
            };
            let canary = window(canary, base_latency.map(|b| &b.0));
            let stable = window(stable, base_latency.map(|b| &b.1));
            let (gates, c99, s99) = policy::latency_gates(&self.spec, &canary, &stable);
            self.latency_gates = Some(LatencyRead {
                at: now,
                gates,
                canary_p99: c99,
                stable_p99: s99,
            });
        }
        if let Some(l) = &self.latency_gates {
            gates.extend_from_slice(&l.gates);
            inputs.canary.p99_ms = l.canary_p99;
            inputs.stable.p99_ms = l.stable_p99;
        }
        let (verdict, inconclusive) = policy::verdict(&self.spec, &inputs, &gates);
        let to = match verdict {
            Verdict::Hold => {
                // Holds are news about once per interval, not on every tick.
                let quiet = self.spec.min_duration(step).max(Duration::from_secs(1));
                if self
                    .last_hold
                    .is_none_or(|t| now.duration_since(t) >= quiet)
                {
                    let decision = policy::decide(&self.spec, &inputs, gates, verdict, false);
                    tracing::info!(route = %self.route, step, "{}", decision.reason);
                    self.last_hold = Some(now);
                    self.remember(time_ms, decision);
                }
                return None;
            }
            Verdict::Promote if step + 1 >= self.spec.step_count() => State::Promoted,
            Verdict::Promote => State::Progressing { step: step + 1 },
            Verdict::Rollback => State::RolledBack,
            Verdict::Pause => State::Paused { step },
        };
        let decision = policy::decide(&self.spec, &inputs, gates, verdict, inconclusive);
        let reason = decision.reason.clone();
        self.remember(time_ms, decision);
        self.transition(to, reason, now).ok()
    }

    fn remember(&mut self, time_ms: u64, decision: Decision) {
        if self.decisions.len() >= KEEP_DECISIONS {
            self.decisions.pop_front();
        }
        self.decisions.push_back(Stamped { time_ms, decision });
    }

    pub fn record(&mut self, entry: Entry) {
        if self.history.len() >= KEEP_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }

    /// An operator's command: promote skips to the next step (or finishes), pause holds,
    /// resume continues (with a fresh window), abort sends everything back to stable.
    pub fn operate(&mut self, op: Op, now: Instant) -> Result<Change, IllegalTransition> {
        let last = self.spec.step_count().saturating_sub(1);
        let to = match (op, self.state) {
            (Op::Promote, State::Progressing { step } | State::Paused { step }) if step < last => {
                State::Progressing { step: step + 1 }
            }
            (Op::Promote, _) => State::Promoted,
            (Op::Pause, State::Progressing { step }) => State::Paused { step },
            (Op::Pause, s) => State::Paused {
                step: s.step().unwrap_or(0),
            },
            (Op::Resume, State::Paused { step }) => State::Progressing { step },
            (Op::Resume, s) => State::Progressing {
                step: s.step().unwrap_or(0),
            },
            (Op::Abort, _) => State::Aborted,
        };
        let what = match op {
            Op::Promote => "promote",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Abort => "abort",
        };
        self.transition(to, format!("operator: {what}"), now)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
