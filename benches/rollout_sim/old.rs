//! The rollout policy as it was before issue 15 (main at 2793cf2), kept here and not in the
//! product, to compare with on the same streams: a step passes when its raw canary error rate
//! is at most `max_error_rate` and its p99 at most `max_p99_ms` (and `max_p99_ratio` times
//! stable's), once `step_interval` and `min_requests` are in; the abort rule rolls back when
//! the canary's error rate over its most recent `abort_min_requests` requests reaches
//! `abort_error_rate`, looked at on every tick. Same windows, same order, same arithmetic.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;
use switchyard::config::rollout::RolloutSpec;
use switchyard::rollout::engine::{Counts, Latency, Sample};

/// The old engine kept at most this many ticks of recent canary counts.
const KEEP_RECENT: usize = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldState {
    Step(usize),
    Promoted,
    RolledBack,
}

pub struct OldRollout<'a> {
    spec: &'a RolloutSpec,
    pub state: OldState,
    step_started: Duration,
    base: Option<(Sample, Latency)>,
    recent: VecDeque<Counts>,
    /// The last transition was the abort rule's.
    pub aborted: bool,
}

fn since(now: Counts, earlier: Counts) -> Counts {
    Counts {
        requests: now.requests.saturating_sub(earlier.requests),
        failures: now.failures.saturating_sub(earlier.failures),
    }
}

fn rate(c: Counts) -> Option<f64> {
    (c.requests > 0).then(|| c.failures as f64 / c.requests as f64)
}

/// p99 of what `now` recorded after `base`, in ms.
fn p99_ms(now: &Histogram<u64>, base: &Histogram<u64>) -> Option<f64> {
    let mut window = now.clone();
    window.subtract(base).ok()?;
    (!window.is_empty()).then(|| window.value_at_quantile(0.99) as f64 / 1000.0)
}

impl<'a> OldRollout<'a> {
    /// Started at step 0 at `now`.
    pub fn new(spec: &'a RolloutSpec, now: Duration) -> Self {
        OldRollout {
            spec,
            state: OldState::Step(0),
            step_started: now,
            base: None,
            recent: VecDeque::new(),
            aborted: false,
        }
    }

    pub fn canary_weight(&self) -> u32 {
        match self.state {
            OldState::Step(s) => self.spec.canary_weight(s),
            OldState::Promoted => 100,
            OldState::RolledBack => 0,
        }
    }

    fn go(&mut self, to: OldState, now: Duration) {
        self.state = to;
        self.step_started = now;
        self.base = None;
        self.recent.clear();
    }

    /// One tick of the old engine and policy.
    pub fn observe(&mut self, now: Duration, sample: Sample, latency: impl Fn() -> Latency) {
        let OldState::Step(step) = self.state else {
            return;
        };
        let g = &self.spec.gates;
        let elapsed = now.saturating_sub(self.step_started);
        let (base, base_latency) = self.base.get_or_insert_with(|| (sample, latency()));
        let base = *base;
        self.recent.push_back(sample.canary);
        let min = g.abort_min_requests;
        while self.recent.len() > KEEP_RECENT
            || (self.recent.len() >= 2 && since(sample.canary, self.recent[1]).requests >= min)
        {
            self.recent.pop_front();
        }
        let recent = since(
            sample.canary,
            self.recent.front().copied().unwrap_or_default(),
        );
        let canary = since(sample.canary, base.canary);
        let stable = since(sample.stable, base.stable);
        let breaker_opens = sample.breaker_opens.saturating_sub(base.breaker_opens);
        // Abort rules.
        let abort = breaker_opens > 0
            || (recent.requests >= g.abort_min_requests
                && rate(recent).is_some_and(|r| r >= g.abort_error_rate));
        if abort {
            self.aborted = true;
            self.go(OldState::RolledBack, now);
            return;
        }
        if elapsed < self.spec.min_duration(step) || canary.requests < g.min_requests {
            return;
        }
        let (c_lat, s_lat) = latency();
        let c99 = p99_ms(&c_lat, &base_latency.0);
        let s99 = p99_ms(&s_lat, &base_latency.1);
        let error_ok = rate(canary).is_none_or(|r| r <= g.max_error_rate);
        let p99_ok = c99.is_none_or(|p| p <= g.max_p99_ms as f64);
        let ratio_ok = match (g.max_p99_ratio, c99, s99) {
            (Some(limit), Some(c), Some(s)) if s > 0.0 && stable.requests > 0 => c / s <= limit,
            _ => true,
        };
        if error_ok && p99_ok && ratio_ok {
            let next = if step + 1 >= self.spec.step_count() {
                OldState::Promoted
            } else {
                OldState::Step(step + 1)
            };
            self.go(next, now);
        } else {
            self.go(OldState::RolledBack, now);
        }
    }
}
