//! The rollout engine's timing on tokio's paused clock: holds, steps, aborts, operator commands.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;
use crate::config::rollout::{Gates, OnFailure, OnInconclusive, Strategy};
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
            confidence: 0.95,
            abort_confidence: 0.999,
            max_error_ratio: 2.0,
            error_ratio_floor: 0.0025,
        },
        on_failure: OnFailure::Rollback,
        max_step_duration: Duration::from_secs(60),
        on_inconclusive: OnInconclusive::Pause,
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
        r.observe(Instant::now(), 0, sample(2500, 0), || latency(2500, 20, 20))
            .is_none(),
        "evidence enough but only half the interval"
    );
    advance(Duration::from_secs(5)).await;
    let c = r
        .observe(Instant::now(), 0, sample(3000, 0), || latency(3000, 20, 20))
        .unwrap();
    assert_eq!(c.to, State::Progressing { step: 1 });
    assert_eq!(r.canary_weight(), 20);
    assert_eq!(r.weights(&[("stable", 95), ("canary", 5)]), [80, 20]);
    let d = &r.decisions.back().unwrap().decision;
    assert_eq!(d.verdict, Verdict::Promote);
    let p99 = d.inputs.canary.p99_ms.unwrap();
    assert!(
        (20.0..20.1).contains(&p99),
        "the p99s are in the record: {p99}"
    );
}

#[tokio::test(start_paused = true)]
async fn too_few_requests_hold_and_say_so_once_per_interval() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    for _ in 0..30 {
        advance(Duration::from_secs(1)).await;
        assert!(
            r.observe(Instant::now(), 0, sample(20, 0), || latency(20, 9, 1))
                .is_none()
        );
    }
    assert_eq!(r.state, State::Progressing { step: 0 });
    let holds = r.decisions.len();
    assert!((2..=3).contains(&holds), "{holds} hold decisions kept");
    assert!(r.decisions[0].decision.reason.contains("20 of the 50"));
}

#[tokio::test(start_paused = true)]
async fn a_hold_for_lack_of_evidence_says_what_is_missing_then_pauses() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    // 60 canary requests a second, 1 in 150 failing (0.67 %) on both arms, against a 1 %
    // gate: not shown either way for a long while.
    let mut req = 0;
    let mut held = None;
    let at = |req: u64| {
        let mut s = sample(req, req / 150);
        s.stable.failures = req * 10 / 150;
        s
    };
    for s in 1..=59 {
        advance(Duration::from_secs(1)).await;
        req += 60;
        let c = r.observe(Instant::now(), 0, at(req), || latency(req, 20, 20));
        assert!(c.is_none(), "decided after {s}s: {c:?}");
        if let Some(d) = r.decisions.back() {
            held = Some(d.decision.reason.clone());
        }
    }
    let held = held.unwrap();
    assert!(
        held.starts_with("hold: step 0 not shown either way"),
        "{held}"
    );
    assert!(held.contains("need about"), "{held}");
    assert!(held.contains("more canary requests"), "{held}");
    // max_step_duration (60 s): on_inconclusive pauses, keeping the weights.
    advance(Duration::from_secs(1)).await;
    let c = r
        .observe(Instant::now(), 0, at(req + 60), || {
            latency(req + 60, 20, 20)
        })
        .unwrap();
    assert_eq!(c.to, State::Paused { step: 0 });
    assert!(c.reason.starts_with("inconclusive:"), "{}", c.reason);
    assert!(r.decisions.back().unwrap().decision.inconclusive);
    assert_eq!(r.canary_weight(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_aborts_without_waiting_for_the_interval() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    // Healthy for a long stretch (5,000 canary requests), then 10 % failures: the windows
    // started late in the step see it within a few ticks.
    let (mut req, mut fail) = (0, 0);
    for _ in 0..50 {
        advance(Duration::from_millis(100)).await;
        req += 100;
        assert!(
            r.observe(Instant::now(), 0, sample(req, fail), || latency(0, 0, 0))
                .is_none()
        );
    }
    let mut ticks = 0;
    let c = loop {
        advance(Duration::from_millis(100)).await;
        ticks += 1;
        req += 50;
        fail += 5;
        if let Some(c) = r.observe(Instant::now(), 0, sample(req, fail), || latency(0, 0, 0)) {
            break c;
        }
        assert!(ticks < 5, "not aborted after {} bad requests", ticks * 50);
    };
    assert_eq!(c.to, State::RolledBack);
    assert!(c.reason.starts_with("abort:"), "{}", c.reason);
    assert_eq!(r.canary_weight(), 0);
    let d = &r.decisions.back().unwrap().decision;
    assert!(
        d.abort && d.inputs.recent.requests <= 300,
        "{:?}",
        d.inputs.recent
    );
}

#[tokio::test(start_paused = true)]
async fn an_equal_canary_is_not_aborted_in_a_long_step() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    // Ten minutes at 100 canary requests a tick, 1 in 200 failing on both arms, in bursts of
    // three (the unlucky stretches a sliding window used to trip on).
    let mut spec = (*r.spec).clone();
    spec.step_interval = Duration::from_secs(3600);
    spec.max_step_duration = Duration::from_secs(3600);
    r.spec = Arc::new(spec);
    let (mut req, mut fail) = (0u64, 0u64);
    for t in 0..6000u64 {
        advance(Duration::from_millis(100)).await;
        req += 100;
        if t % 6 == 5 {
            fail += 3;
        }
        let mut s = sample(req, fail);
        s.stable.failures = fail * 10;
        assert!(
            r.observe(Instant::now(), 0, s, || latency(0, 0, 0))
                .is_none(),
            "aborted at tick {t}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_fails_the_ratio_at_the_end_of_the_step() {
    let mut r = started();
    r.observe(Instant::now(), 0, sample(0, 0), || latency(0, 0, 0));
    advance(Duration::from_secs(10)).await;
    let c = r
        .observe(Instant::now(), 0, sample(2000, 0), || latency(2000, 90, 30))
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

/// A new fleet leader's engine: the step began before it, past its `max_step_duration`, and
/// is judged on every count since the step began (the base it is primed with), never on the
/// empty window priming would otherwise be, and never undecided for lack of the early counts.
#[tokio::test(start_paused = true)]
async fn a_primed_engine_judges_the_whole_step_it_joins() {
    let base = sample(1_000, 2);
    let saved = Saved {
        fingerprint: spec().fingerprint(),
        state: State::Progressing { step: 1 },
        history: Vec::new(),
    };
    let now = Instant::now();
    advance(Duration::from_secs(61)).await;
    let mut r = Rollout::restore("r".into(), spec(), &saved, now);
    r.prime(base, latency(1_000, 10, 10));
    // 2,000 clean canary requests in the step, most of them before this engine started.
    let c = r
        .observe(Instant::now(), 0, sample(3_000, 2), || {
            latency(3_000, 10, 10)
        })
        .expect("decided on the step's counts");
    assert_eq!(c.to, State::Progressing { step: 2 }, "{}", c.reason);
    let d = &r.decisions.back().unwrap().decision;
    assert_eq!(d.inputs.canary.requests, 2_000);
    assert!(!d.inconclusive, "{}", d.reason);
}
