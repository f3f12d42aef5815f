//! The rollout engine's timing on tokio's paused clock: holds, steps, aborts, operator commands.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;
use crate::config::rollout::{Gates, OnFailure, Strategy};
use crate::stats::histogram::new_histogram;

fn spec() -> Arc<RolloutSpec> {
    Arc::new(RolloutSpec {
        strategy: Strategy::Canary,
        stable: "stable".into(),
        canary: "canary".into(),
        steps: vec![5, 20, 50, 100],
        step_interval: Duration::from_secs(10),
        post_promotion: Duration::ZERO,
        gates: Gates {
            min_requests: 50,
            max_error_rate: 0.01,
            max_p99_ms: 500,
            max_p99_ratio: Some(1.5),
            abort_error_rate: 0.05,
            abort_min_requests: 40,
            max_shadow_mismatch_rate: None,
        },
        on_failure: OnFailure::Rollback,
    })
}

/// Latency histograms where every request took `canary_ms` / `stable_ms`.
fn latency(samples: u64, canary_ms: u64, stable_ms: u64) -> Latency {
    let mut c = new_histogram();
    let mut s = new_histogram();
    if samples > 0 {
        c.record_n(canary_ms * 1000, samples).unwrap();
        s.record_n(stable_ms * 1000, samples).unwrap();
    }
    (c, s)
}

/// Traffic so far: canary requests and failures; stable took ten times as many.
fn sample(canary: u64, failures: u64) -> Sample {
    Sample {
        canary: Counts {
            requests: canary,
            failures,
        },
        stable: Counts {
            requests: canary * 10,
            failures: 0,
        },
        ..Sample::default()
    }
}

fn started() -> Rollout {
    let mut r = Rollout::new("r".into(), spec(), Instant::now());
    let c = r
        .observe(Instant::now(), 0, Sample::default(), || latency(0, 0, 0))
        .unwrap();
    assert_eq!(c.to, State::Progressing { step: 0 });
    r
}

#[tokio::test(start_paused = true)]
async fn a_step_waits_for_its_interval_then_moves_on() {
    let mut r = started();
    assert!(
        r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0))
            .is_none()
    );
    advance(Duration::from_secs(5)).await;
    assert!(
        r.observe(Instant::now(), 0, sample(500, 0), || latency(500, 20, 20))
            .is_none(),
        "enough requests but only half the interval"
    );
    advance(Duration::from_secs(5)).await;
    let c = r
        .observe(Instant::now(), 0, sample(600, 0), || latency(600, 20, 20))
        .unwrap();
    assert_eq!(c.to, State::Progressing { step: 1 });
    assert_eq!(r.canary_weight(), 20);
    assert_eq!(r.weights(&[("stable", 95), ("canary", 5)]), [80, 20]);
    assert_eq!(
        r.decisions.back().unwrap().decision.verdict,
        Verdict::Promote
    );
}

#[tokio::test(start_paused = true)]
async fn too_few_requests_hold_and_say_so_once_per_interval() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    for _ in 0..30 {
        advance(Duration::from_secs(1)).await;
        assert!(
            r.observe(Instant::now(), 0, sample(20, 20), || latency(20, 9, 1))
                .is_none()
        );
    }
    assert_eq!(r.state, State::Progressing { step: 0 });
    let holds = r.decisions.len();
    assert!((2..=3).contains(&holds), "{holds} hold decisions kept");
    assert!(r.decisions[0].decision.reason.contains("20 of the 50"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_aborts_without_waiting_for_the_interval() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    // Healthy for a long stretch, then 10% failures: the recent window sees it at once.
    let (mut req, mut fail) = (0, 0);
    for _ in 0..50 {
        advance(Duration::from_millis(100)).await;
        req += 100;
        assert!(
            r.observe(Instant::now(), 0, sample(req, fail), || latency(0, 0, 0))
                .is_none()
        );
    }
    advance(Duration::from_millis(100)).await;
    req += 50;
    fail += 5;
    let c = r
        .observe(Instant::now(), 0, sample(req, fail), || latency(0, 0, 0))
        .unwrap();
    assert_eq!(c.to, State::RolledBack);
    assert!(c.reason.starts_with("abort:"), "{}", c.reason);
    assert_eq!(r.canary_weight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_fails_the_ratio_at_the_end_of_the_step() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    advance(Duration::from_secs(10)).await;
    let c = r
        .observe(Instant::now(), 0, sample(100, 0), || latency(100, 90, 30))
        .unwrap();
    assert_eq!(c.to, State::RolledBack);
    assert!(c.reason.contains("p99_ratio"), "{}", c.reason);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opening_while_paused_still_rolls_back() {
    let mut r = started();
    r.operate(Op::Pause, Instant::now()).unwrap();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    let mut s = sample(3, 3);
    s.breaker_opens = 1;
    let c = r
        .observe(Instant::now(), 0, s, || latency(0, 0, 0))
        .unwrap();
    assert_eq!(c.to, State::RolledBack);
    assert!(c.reason.contains("breaker"));
}

#[tokio::test(start_paused = true)]
async fn operators_promote_pause_resume_and_abort() {
    let mut r = started();
    let now = Instant::now();
    assert_eq!(
        r.operate(Op::Promote, now).unwrap().to,
        State::Progressing { step: 1 }
    );
    assert_eq!(
        r.operate(Op::Pause, now).unwrap().to,
        State::Paused { step: 1 }
    );
    assert!(r.operate(Op::Pause, now).is_err(), "already paused");
    assert_eq!(
        r.operate(Op::Resume, now).unwrap().to,
        State::Progressing { step: 1 }
    );
    assert!(r.operate(Op::Resume, now).is_err(), "not paused");
    r.operate(Op::Promote, now).unwrap();
    r.operate(Op::Promote, now).unwrap();
    assert_eq!(r.operate(Op::Promote, now).unwrap().to, State::Promoted);
    assert!(r.operate(Op::Abort, now).is_err(), "promoted is final");
    let mut r = started();
    assert_eq!(r.operate(Op::Abort, now).unwrap().to, State::Aborted);
    assert_eq!(r.weights(&[("stable", 95), ("canary", 5)]), [100, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_restored_rollout_resumes_only_with_the_same_spec() {
    let mut r = started();
    r.operate(Op::Promote, Instant::now()).unwrap();
    let saved = r.saved();
    let back = Rollout::restore("r".into(), spec(), &saved, Instant::now());
    assert_eq!(back.state, State::Progressing { step: 1 });
    let mut other = (*spec()).clone();
    other.steps = vec![10, 100];
    let fresh = Rollout::restore("r".into(), Arc::new(other), &saved, Instant::now());
    assert_eq!(fresh.state, State::Pending);
}
