//! The policy on plain numbers: every gate, every verdict, the abort rules.

use super::*;
use crate::config::rollout::{Gates, Strategy};

fn spec() -> RolloutSpec {
    RolloutSpec {
        strategy: Strategy::Canary,
        stable: "s".into(),
        canary: "c".into(),
        steps: vec![5, 20, 50, 100],
        step_interval: Duration::from_secs(10),
        post_promotion: Duration::ZERO,
        gates: Gates {
            min_requests: 100,
            max_error_rate: 0.01,
            max_p99_ms: 500,
            max_p99_ratio: Some(1.5),
            abort_error_rate: 0.05,
            abort_min_requests: 100,
            max_shadow_mismatch_rate: None,
        },
        on_failure: OnFailure::Rollback,
    }
}

fn healthy(step: usize) -> Inputs {
    let arm = Arm {
        requests: 1000,
        failures: 2,
        p99_ms: Some(40.0),
    };
    Inputs {
        step,
        elapsed: Duration::from_secs(11),
        canary: arm,
        stable: Arm {
            requests: 9000,
            ..arm
        },
        breaker_opens: 0,
        shadow: ShadowCounts::default(),
        recent: Arm {
            requests: 100,
            failures: 0,
            p99_ms: None,
        },
    }
}

fn gate(d: &Decision, name: &str) -> GateStatus {
    d.gates.iter().find(|g| g.gate == name).unwrap().status
}

#[test]
fn healthy_numbers_promote_to_the_next_step_and_finally_promote() {
    let d = evaluate(&spec(), &healthy(1));
    assert_eq!(d.verdict, Verdict::Promote, "{}", d.reason);
    assert!(d.reason.contains("step 2 (50%)"), "{}", d.reason);
    assert!(d.gates.iter().all(|g| g.status != GateStatus::Fail));
    assert_eq!(gate(&d, "shadow_mismatch_rate"), GateStatus::NotApplicable);
    let last = evaluate(&spec(), &healthy(3));
    assert_eq!(last.verdict, Verdict::Promote);
    assert!(last.reason.ends_with("promoted"), "{}", last.reason);
}

#[test]
fn holds_until_the_interval_and_the_requests_are_in() {
    let mut i = healthy(0);
    i.elapsed = Duration::from_secs(3);
    let d = evaluate(&spec(), &i);
    assert_eq!(d.verdict, Verdict::Hold);
    assert!(d.reason.contains("3.0s of its 10.0s"), "{}", d.reason);
    let mut i = healthy(0);
    i.canary.requests = 20;
    i.canary.failures = 20;
    i.recent = i.canary;
    let d = evaluate(&spec(), &i);
    assert_eq!(d.verdict, Verdict::Hold, "too little data never decides");
    assert!(d.reason.contains("20 of the 100"), "{}", d.reason);
}

#[test]
fn an_error_rate_past_the_gate_rolls_back_or_pauses() {
    let mut i = healthy(0);
    i.canary.failures = 50;
    let d = evaluate(&spec(), &i);
    assert_eq!(d.verdict, Verdict::Rollback);
    assert!(!d.abort);
    assert_eq!(gate(&d, "error_rate"), GateStatus::Fail);
    assert!(
        d.reason.contains("error_rate 5.00% > 1.00%"),
        "{}",
        d.reason
    );
    let mut s = spec();
    s.on_failure = OnFailure::Pause;
    assert_eq!(evaluate(&s, &i).verdict, Verdict::Pause);
}

#[test]
fn a_slow_canary_fails_p99_and_the_ratio() {
    let mut i = healthy(0);
    i.canary.p99_ms = Some(120.0);
    let d = evaluate(&spec(), &i);
    assert_eq!(d.verdict, Verdict::Rollback);
    assert_eq!(gate(&d, "p99_ratio"), GateStatus::Fail);
    assert_eq!(gate(&d, "p99_ms"), GateStatus::Pass);
    assert!(d.reason.contains("p99_ratio 3.00x > 1.50x"), "{}", d.reason);
    i.canary.p99_ms = Some(700.0);
    i.stable.p99_ms = Some(700.0);
    let d = evaluate(&spec(), &i);
    assert_eq!(gate(&d, "p99_ms"), GateStatus::Fail);
    assert_eq!(gate(&d, "p99_ratio"), GateStatus::Pass);
}

#[test]
fn the_ratio_does_not_apply_without_stable_traffic() {
    let mut i = healthy(3);
    i.stable = Arm::default();
    let d = evaluate(&spec(), &i);
    assert_eq!(gate(&d, "p99_ratio"), GateStatus::NotApplicable);
    assert_eq!(d.verdict, Verdict::Promote);
}

#[test]
fn aborts_at_once_on_a_breaker_or_a_wide_error_rate() {
    let mut i = healthy(0);
    i.elapsed = Duration::from_millis(100);
    i.canary.requests = 3;
    i.breaker_opens = 1;
    let d = evaluate(&spec(), &i);
    assert_eq!((d.verdict, d.abort), (Verdict::Rollback, true));
    assert!(d.reason.contains("breaker opened"), "{}", d.reason);

    let mut i = healthy(0);
    i.elapsed = Duration::from_millis(100);
    i.recent = Arm {
        requests: 100,
        failures: 5,
        p99_ms: None,
    };
    let d = abort_check(&spec(), &i).unwrap();
    assert!(d.reason.contains("5.00%"), "{}", d.reason);
    i.recent.failures = 4;
    assert!(abort_check(&spec(), &i).is_none(), "under the line");
    i.recent = Arm {
        requests: 99,
        failures: 99,
        p99_ms: None,
    };
    assert!(abort_check(&spec(), &i).is_none(), "too few to abort on");
}

#[test]
fn shadow_mismatches_gate_only_when_configured_and_compared() {
    let mut s = spec();
    s.gates.max_shadow_mismatch_rate = Some(0.01);
    let mut i = healthy(0);
    assert_eq!(
        gate(&evaluate(&s, &i), "shadow_mismatch_rate"),
        GateStatus::NotApplicable
    );
    i.shadow = ShadowCounts {
        compared: 100,
        mismatched: 5,
    };
    let d = evaluate(&s, &i);
    assert_eq!(gate(&d, "shadow_mismatch_rate"), GateStatus::Fail);
    assert_eq!(d.verdict, Verdict::Rollback);
}

#[test]
fn blue_green_watches_after_the_switch() {
    let mut s = spec();
    s.strategy = Strategy::BlueGreen;
    s.steps = vec![0, 100];
    s.post_promotion = Duration::from_secs(30);
    let d = evaluate(&s, &healthy(0));
    assert!(d.reason.contains("step 1 (100%)"), "{}", d.reason);
    let d = evaluate(&s, &healthy(1));
    assert_eq!(d.verdict, Verdict::Hold, "the watch is 30 s: {}", d.reason);
}
