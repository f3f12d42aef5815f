//! One route's rollout: its state, the window of the step it is at, the decisions it made. It
//! is fed readings and the time by the controller and answers with state changes; it reads no
//! clock and does no I/O itself (so its timing is unit-tested on tokio's paused clock).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::journal::{Entry, Saved};
use super::machine::{self, IllegalTransition, State};
use super::policy::{self, Arm, Decision, Inputs, Verdict};
use crate::config::rollout::RolloutSpec;
use crate::stats::ShadowCounts;

/// Decisions and transitions kept for `GET /rollouts/{route}`.
const KEEP_DECISIONS: usize = 10;
const KEEP_HISTORY: usize = 50;
/// Ticks of recent canary counts kept at most for the abort rule.
const KEEP_RECENT: usize = 3000;

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

/// Cumulative latency histograms of (canary, stable); read only when a step is evaluated.
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

pub struct Rollout {
    pub route: Arc<str>,
    pub spec: Arc<RolloutSpec>,
    pub fingerprint: String,
    pub state: State,
    step_started: Instant,
    base: Option<(Sample, Latency)>,
    recent: VecDeque<Counts>,
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
            recent: VecDeque::new(),
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
            self.recent.clear();
            self.last_hold = None;
        }
        Ok(Change { from, to, reason })
    }

    /// One tick: starts a pending rollout, checks the abort rules, and evaluates the step once
    /// its time and requests are in. `latency` is called only when percentiles are needed.
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
        let (base, base_latency) = self.base.get_or_insert_with(|| (sample, latency()));
        let base = *base;
        self.recent.push_back(sample.canary);
        let min = self.spec.gates.abort_min_requests;
        while self.recent.len() > KEEP_RECENT
            || (self.recent.len() >= 2 && sample.canary.since(self.recent[1]).requests >= min)
        {
            self.recent.pop_front();
        }
        let recent = self.recent.front().map_or(Counts::default(), |&c| c);
        let mut inputs = Inputs {
            step,
            elapsed,
            canary: sample.canary.since(base.canary).arm(None),
            stable: sample.stable.since(base.stable).arm(None),
            breaker_opens: sample.breaker_opens.saturating_sub(base.breaker_opens),
            shadow: sample.shadow.since(base.shadow),
            recent: sample.canary.since(recent).arm(None),
        };
        let paused = matches!(self.state, State::Paused { .. });
        let ready = inputs.elapsed >= self.spec.min_duration(step)
            && inputs.canary.requests >= self.spec.gates.min_requests;
        if ready && !paused {
            let (canary, stable) = latency();
            inputs.canary.p99_ms = p99_ms(&canary, &base_latency.0);
            inputs.stable.p99_ms = p99_ms(&stable, &base_latency.1);
        }
        let decision = if paused {
            policy::abort_check(&self.spec, &inputs)?
        } else {
            policy::evaluate(&self.spec, &inputs)
        };
        let to = match decision.verdict {
            Verdict::Hold => {
                // Only a hold on too few requests is news, and not on every tick.
                let quiet = self.spec.min_duration(step).max(Duration::from_secs(1));
                let due = self
                    .last_hold
                    .is_none_or(|t| now.duration_since(t) >= quiet);
                if inputs.elapsed >= self.spec.min_duration(step) && due {
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

/// p99 of what `now` recorded after `base`, in ms.
fn p99_ms(now: &Histogram<u64>, base: &Histogram<u64>) -> Option<f64> {
    let mut window = now.clone();
    window.subtract(base).ok()?;
    (!window.is_empty()).then(|| window.value_at_quantile(0.99) as f64 / 1000.0)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
