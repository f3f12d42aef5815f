//! A per-backend circuit breaker as a small state machine over an injected clock.
//!
//! Closed --(trip: a failure streak, or the window's failure share)--> Open
//! Open --(open time passed, first admission)--> HalfOpen
//! HalfOpen --(`half_open_requests` probe successes)--> Closed
//! HalfOpen --(one probe failure)--> Open, for twice as long (capped)
//!
//! Everything here is pure: callers pass the time and the counts, and apply what comes back.
//! [`super::state::BreakerCell`] wraps it for concurrent use.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::model::BreakerConfig;
use crate::stats::Totals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// `switchyard_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Whether a request may go to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    /// A half-open probe: its result decides the breaker, and it holds one of the few slots.
    Probe,
    Rejected,
}

/// A state change, for the log and the caller's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Opened { reason: String, open_for: Duration },
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    open_until: Instant,
    /// Re-opens from half-open since the last close: each doubles the open time.
    reopens: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

/// Why the window or the streak says open, if it does.
pub fn trip_reason(cfg: &BreakerConfig, consecutive: u32, window: Totals) -> Option<String> {
    if cfg.consecutive_failures > 0 && consecutive >= cfg.consecutive_failures {
        return Some(format!("{consecutive} failures in a row"));
    }
    if window.total >= u64::from(cfg.min_requests) && window.failure_rate() >= cfg.failure_rate {
        return Some(format!(
            "{} of {} requests failed in the last {:?} ({:.0}% >= {:.0}%)",
            window.failed,
            window.total,
            cfg.window,
            window.failure_rate() * 100.0,
            cfg.failure_rate * 100.0
        ));
    }
    None
}

/// How long the breaker stays open after `reopens` re-opens.
pub fn open_duration(cfg: &BreakerConfig, reopens: u32) -> Duration {
    let factor = 1u32.checked_shl(reopens.min(16)).unwrap_or(u32::MAX);
    cfg.open_for.saturating_mul(factor).min(cfg.max_open_for)
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            open_until: Instant::now(),
            reopens: 0,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn open_until(&self) -> Instant {
        self.open_until
    }

    /// A failure while closed, with the streak and window that include it.
    pub fn on_closed_failure(
        &mut self,
        cfg: &BreakerConfig,
        now: Instant,
        consecutive: u32,
        window: Totals,
    ) -> Option<Transition> {
        if self.state != BreakerState::Closed {
            return None;
        }
        let reason = trip_reason(cfg, consecutive, window)?;
        Some(self.open(cfg, now, reason))
    }

    fn open(&mut self, cfg: &BreakerConfig, now: Instant, reason: String) -> Transition {
        let open_for = open_duration(cfg, self.reopens);
        self.state = BreakerState::Open;
        self.open_until = now + open_for;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        Transition::Opened { reason, open_for }
    }

    /// Decides whether a request may go now. Past the open time, the first admission moves the
    /// breaker to half-open; only `half_open_requests` probes are out at once.
    pub fn admit(&mut self, cfg: &BreakerConfig, now: Instant) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return (Admission::Rejected, None);
            }
            self.state = BreakerState::HalfOpen;
            transition = Some(Transition::HalfOpened);
        }
        match self.state {
            BreakerState::Closed => (Admission::Normal, transition),
            BreakerState::HalfOpen if self.probes_in_flight < cfg.half_open_requests => {
                self.probes_in_flight += 1;
                (Admission::Probe, transition)
            }
            _ => (Admission::Rejected, transition),
        }
    }

    /// The result of a probe.
    pub fn on_probe_result(
        &mut self,
        cfg: &BreakerConfig,
        now: Instant,
        failed: bool,
    ) -> Option<Transition> {
        if self.state != BreakerState::HalfOpen {
            return None;
        }
        self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        if failed {
            self.reopens = self.reopens.saturating_add(1);
            return Some(self.open(cfg, now, "a half-open probe failed".into()));
        }
        self.probe_successes += 1;
        if self.probe_successes >= cfg.half_open_requests {
            self.state = BreakerState::Closed;
            self.reopens = 0;
            self.probe_successes = 0;
            return Some(Transition::Closed);
        }
        None
    }

    /// A probe whose result says nothing about the backend (the client went away).
    pub fn on_probe_abandoned(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_requests: 10,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            half_open_requests: 2,
            ..BreakerConfig::default()
        }
    }

    fn counts(total: u64, failed: u64) -> Totals {
        Totals { total, failed }
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_opens_then_probes_close_it() {
        let c = cfg();
        let mut b = Breaker::default();
        assert_eq!(
            b.on_closed_failure(&c, Instant::now(), 2, counts(2, 2)),
            None
        );
        let t = b.on_closed_failure(&c, Instant::now(), 3, counts(3, 3));
        assert!(
            matches!(t, Some(Transition::Opened { open_for, .. }) if open_for == Duration::from_secs(10))
        );
        assert_eq!(b.admit(&c, Instant::now()).0, Admission::Rejected);

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            b.admit(&c, Instant::now()),
            (Admission::Probe, Some(Transition::HalfOpened))
        );
        assert_eq!(b.admit(&c, Instant::now()), (Admission::Probe, None));
        // No thundering herd: two probes out, the third request is turned away.
        assert_eq!(b.admit(&c, Instant::now()).0, Admission::Rejected);
        assert_eq!(b.on_probe_result(&c, Instant::now(), false), None);
        assert_eq!(
            b.on_probe_result(&c, Instant::now(), false),
            Some(Transition::Closed)
        );
        assert_eq!(b.admit(&c, Instant::now()).0, Admission::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn each_reopen_doubles_the_open_time_up_to_the_cap() {
        let c = cfg();
        let mut b = Breaker::default();
        b.on_closed_failure(&c, Instant::now(), 3, counts(3, 3));
        let mut expected = 10;
        for _ in 0..8 {
            tokio::time::advance(Duration::from_secs(expected)).await;
            assert_eq!(b.admit(&c, Instant::now()).0, Admission::Probe);
            let t = b.on_probe_result(&c, Instant::now(), true);
            expected = (expected * 2).min(300);
            assert!(
                matches!(t, Some(Transition::Opened { open_for, .. }) if open_for.as_secs() == expected),
                "{t:?}"
            );
        }
        assert_eq!(expected, 300);
    }

    #[test]
    fn the_window_trips_only_with_enough_requests() {
        let c = cfg();
        assert_eq!(trip_reason(&c, 1, counts(9, 9)), None, "too few to judge");
        assert!(trip_reason(&c, 1, counts(10, 6)).is_some(), "60% >= 50%");
        assert_eq!(trip_reason(&c, 1, counts(10, 4)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot_without_deciding() {
        let c = cfg();
        let mut b = Breaker::default();
        b.on_closed_failure(&c, Instant::now(), 3, counts(3, 3));
        tokio::time::advance(Duration::from_secs(10)).await;
        b.admit(&c, Instant::now());
        b.admit(&c, Instant::now());
        b.on_probe_abandoned();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(&c, Instant::now()).0, Admission::Probe);
    }
}
