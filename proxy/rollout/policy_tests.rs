//! The policy on plain numbers: every gate's test, every verdict, the abort rules, and what a
//! decision record says.

use super::*;
use crate::config::rollout::{Gates, Strategy};
use crate::stats::histogram::new_histogram;

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
            confidence: 0.95,
            abort_confidence: 0.999,
            max_error_ratio: 2.0,
            error_ratio_floor: 0.0025,
        },
        on_failure: OnFailure::Rollback,
        max_step_duration: Duration::from_secs(600),
        on_inconclusive: OnInconclusive::Pause,
    }
}

fn arm(requests: u64, failures: u64) -> Arm {
    Arm {
        requests,
        failures,
        p99_ms: None,
    }
}

/// A step well past its interval: canary and stable at 0.1 % over plenty of requests.
fn healthy(step: usize) -> Inputs {
    Inputs {
        step,
        elapsed: Duration::from_secs(60),
        canary: arm(20_000, 20),
        stable: arm(180_000, 180),
        breaker_opens: 0,
        shadow: ShadowCounts::default(),
        recent: Arm::default(),
    }
}

/// Histograms of `n` requests each: every request takes `canary_ms` / `stable_ms`, but one in
/// 200 takes three times as long (so the p99 sits at the fast value).
fn histograms(n: u64, canary_ms: u64, stable_ms: u64) -> (Histogram<u64>, Histogram<u64>) {
    let mut c = new_histogram();
    let mut s = new_histogram();
    for (h, ms) in [(&mut c, canary_ms), (&mut s, stable_ms)] {
        h.record_n(ms * 1000, n - n / 200).unwrap();
        h.record_n(ms * 3000, n / 200).unwrap();
    }
    (c, s)
}

fn latency(spec: &RolloutSpec, n: u64, canary_ms: u64, stable_ms: u64) -> Vec<GateResult> {
    let (c, s) = histograms(n, canary_ms, stable_ms);
    latency_gates(spec, &c, &s).0
}

fn gate<'a>(d: &'a Decision, name: &str) -> &'a GateResult {
    d.gates.iter().find(|g| g.gate == name).unwrap()
}

#[test]
fn healthy_numbers_promote_to_the_next_step_and_finally_promote() {
    let s = spec();
    let d = evaluate(&s, &healthy(1), &latency(&s, 20_000, 40, 40));
    assert_eq!(d.verdict, Verdict::Promote, "{}", d.reason);
    assert!(d.reason.contains("step 2 (50%)"), "{}", d.reason);
    assert!(d.reason.contains("at 95% confidence"), "{}", d.reason);
    for g in &d.gates {
        assert!(
            matches!(g.status, GateStatus::Pass | GateStatus::NotApplicable),
            "{g:?}"
        );
    }
    assert!(gate(&d, "error_rate").confidence_not_worse >= 0.95);
    assert_eq!(
        gate(&d, "shadow_mismatch_rate").status,
        GateStatus::NotApplicable
    );
    let mut last = healthy(3);
    last.stable = Arm::default();
    let d = evaluate(&s, &last, &latency(&s, 20_000, 40, 40));
    assert_eq!(d.verdict, Verdict::Promote, "{}", d.reason);
    assert!(d.reason.contains("promoted"), "{}", d.reason);
    assert_eq!(gate(&d, "error_ratio").status, GateStatus::NotApplicable);
}

#[test]
fn holds_until_the_interval_and_the_requests_are_in() {
    let s = spec();
    let mut i = healthy(0);
    i.elapsed = Duration::from_secs(3);
    let d = evaluate(&s, &i, &[]);
    assert_eq!(d.verdict, Verdict::Hold);
    assert!(d.reason.contains("3.0s of its 10.0s"), "{}", d.reason);
    let mut i = healthy(0);
    i.canary = arm(20, 2);
    let d = evaluate(&s, &i, &[]);
    assert_eq!(d.verdict, Verdict::Hold, "too little data never decides");
    assert!(d.reason.contains("20 of the 100"), "{}", d.reason);
}

#[test]
fn a_healthy_canary_unlucky_in_a_small_window_holds_instead_of_rolling_back() {
    // The case: 3 failures in 244 requests (1.23 %) against a 1 % gate. The old gate
    // rolled this back; the data do not show the canary worse than 1 %, nor better.
    let s = spec();
    let mut i = healthy(0);
    i.canary = arm(244, 3);
    i.stable = arm(4636, 23);
    let d = evaluate(&s, &i, &latency(&s, 244, 40, 40));
    assert_eq!(d.verdict, Verdict::Hold, "{}", d.reason);
    let g = gate(&d, "error_rate");
    assert_eq!(g.status, GateStatus::Inconclusive);
    assert!(g.confidence_worse < 0.95, "{g:?}");
    // The record says what is missing, in requests and seconds.
    assert!(
        d.reason.contains("error_rate 1.23% vs 1.00%"),
        "{}",
        d.reason
    );
    let missing = g.missing.as_deref().unwrap();
    assert!(missing.contains("more canary requests"), "{missing}");
}

#[test]
fn an_error_rate_shown_past_the_limit_rolls_back_or_pauses() {
    let s = spec();
    // 3 % against a 1 % gate, stable at 2 % (so the ratio to stable is within bounds): the
    // step's test decides, not the abort rule, which is built for 5 % and more.
    let mut i = healthy(0);
    i.canary = arm(1000, 30);
    i.stable = arm(19_000, 380);
    let d = evaluate(&s, &i, &latency(&s, 1000, 40, 40));
    assert_eq!(d.verdict, Verdict::Rollback, "{}", d.reason);
    assert!(!d.abort, "{}", d.reason);
    let g = gate(&d, "error_rate");
    assert_eq!(g.status, GateStatus::Fail);
    assert!(g.confidence_worse >= 0.95);
    assert!(g.test.contains("SPRT"), "{}", g.test);
    assert!(
        d.reason.contains("error_rate 3.00% > 1.00%"),
        "{}",
        d.reason
    );
    let mut p = spec();
    p.on_failure = OnFailure::Pause;
    assert_eq!(evaluate(&p, &i, &[]).verdict, Verdict::Pause);
}

#[test]
fn a_canary_several_times_worse_than_stable_fails_even_under_the_limit() {
    // Stable 0.2 %, canary 0.8 %: both under max_error_rate, but the canary is 4x stable.
    let s = spec();
    let mut i = healthy(1);
    i.canary = arm(40_000, 320);
    i.stable = arm(160_000, 320);
    let d = evaluate(&s, &i, &latency(&s, 40_000, 40, 40));
    assert_eq!(d.verdict, Verdict::Rollback, "{}", d.reason);
    assert_eq!(gate(&d, "error_rate").status, GateStatus::Pass);
    let g = gate(&d, "error_ratio");
    assert_eq!(g.status, GateStatus::Fail);
    assert!((g.value.unwrap() - 4.0).abs() < 1e-9);
    assert!(
        d.reason
            .contains("error_ratio 4.00x (canary 0.80% vs stable 0.20%) > 2.00x"),
        "{}",
        d.reason
    );
}

#[test]
fn tiny_error_rates_are_not_compared_with_stable_below_the_floor() {
    // Stable 0.001 %, canary 0.01 %: ten times worse but far below error_ratio_floor.
    let s = spec();
    let mut i = healthy(1);
    i.canary = arm(50_000, 5);
    i.stable = arm(200_000, 2);
    let d = evaluate(&s, &i, &latency(&s, 50_000, 40, 40));
    assert_eq!(
        gate(&d, "error_ratio").status,
        GateStatus::Pass,
        "{}",
        d.reason
    );
    assert_eq!(d.verdict, Verdict::Promote, "{}", d.reason);
}

#[test]
fn a_slow_canary_fails_the_ratio_and_a_very_slow_one_the_ceiling() {
    let s = spec();
    let i = healthy(0);
    let d = evaluate(&s, &i, &latency(&s, 5000, 120, 40));
    assert_eq!(d.verdict, Verdict::Rollback, "{}", d.reason);
    assert_eq!(gate(&d, "p99_ratio").status, GateStatus::Fail);
    assert_eq!(gate(&d, "p99_ms").status, GateStatus::Pass);
    assert!(d.reason.contains("p99_ratio 3.00x > 1.50x"), "{}", d.reason);
    let d = evaluate(&s, &i, &latency(&s, 5000, 700, 700));
    assert_eq!(gate(&d, "p99_ms").status, GateStatus::Fail, "{}", d.reason);
    assert_eq!(gate(&d, "p99_ratio").status, GateStatus::Pass);
}

#[test]
fn a_p99_needs_hundreds_of_samples_to_be_shown_under_the_ceiling() {
    let s = spec();
    let few = latency(&s, 150, 40, 40);
    assert_eq!(few[0].status, GateStatus::Inconclusive, "{:?}", few[0]);
    let many = latency(&s, 2000, 40, 40);
    assert_eq!(many[0].status, GateStatus::Pass, "{:?}", many[0]);
    let (c, empty) = (histograms(2000, 40, 40).0, new_histogram());
    let (gates, _, stable_p99) = latency_gates(&s, &c, &empty);
    assert_eq!(stable_p99, None);
    assert_eq!(gates[1].status, GateStatus::NotApplicable);
}

#[test]
fn aborts_at_once_on_a_breaker_or_a_canary_shown_failing() {
    let s = spec();
    let mut i = healthy(0);
    i.elapsed = Duration::from_millis(100);
    i.canary = arm(3, 0);
    i.breaker_opens = 1;
    let d = evaluate(&s, &i, &[]);
    assert_eq!((d.verdict, d.abort), (Verdict::Rollback, true));
    assert!(d.reason.contains("breaker opened"), "{}", d.reason);

    // A canary failing 10 % from the start of the step, stable healthy: found within a few
    // dozen requests, by its error rate alone (stable takes no part).
    let found = (10..200)
        .find(|&n| {
            let mut i = healthy(0);
            i.stable = Arm::default();
            i.canary = arm(n, n / 10);
            abort_check(&s, &i, &[window(0, i.canary, i.stable)]).is_some()
        })
        .unwrap();
    assert!(found <= 100, "{found} requests");

    // Two failures in the first two requests (a backend still starting) are left to the
    // breaker: windows under 20 canary requests do not count.
    let mut i = healthy(0);
    i.stable = Arm::default();
    i.canary = arm(2, 2);
    assert!(abort_check(&s, &i, &[window(0, i.canary, i.stable)]).is_none());
    i.canary = arm(20, 20);
    assert!(abort_check(&s, &i, &[window(0, i.canary, i.stable)]).is_some());

    let mut i = healthy(0);
    i.canary = arm(80, 8);
    i.stable = arm(1520, 2);
    let d = abort_check(&s, &i, &[window(0, i.canary, i.stable)]).unwrap();
    assert!(
        d.reason.starts_with("abort: canary error rate 10.00%"),
        "{}",
        d.reason
    );
    assert!(d.reason.contains("99.9% needed"), "{}", d.reason);
    assert_eq!(d.inputs.recent.requests, 80);
}

fn window(index: u32, canary: Arm, stable: Arm) -> Window {
    Window {
        index,
        canary,
        stable,
    }
}

#[test]
fn a_canary_that_turns_bad_late_is_judged_on_its_recent_window() {
    let s = spec();
    // 10,000 healthy canary requests (at 0.05 %), then 200 failing 10 %: the whole step is at
    // 0.25 %, under every line. The window started after the 100th block of 100 requests
    // costs ln(2 * 100 * 101) = 9.9 in evidence: the price of looking at every block.
    let bad = arm(200, 20);
    let step = arm(10_200, 20 + 5);
    let stable = arm(190_000, 95);
    let i = Inputs {
        canary: step,
        stable,
        ..healthy(0)
    };
    assert!(abort_check(&s, &i, &[window(0, step, stable)]).is_none());
    let recent = window(100, bad, arm(3800, 2));
    let d = abort_check(&s, &i, &[window(0, step, stable), recent]).unwrap();
    assert_eq!(d.inputs.recent.requests, 200);
}

#[test]
fn an_equal_canary_is_not_aborted_however_many_windows_are_looked_at() {
    let s = spec();
    let mut windows = vec![window(0, arm(100_000, 500), arm(1_900_000, 9_500))];
    for j in 1..=12 {
        // Each recent window: the canary's 100 requests with an unlucky 3 failures.
        windows.push(window(
            j * 80,
            arm(100 * (13 - j) as u64, 3),
            arm(1900 * (13 - j) as u64, 10),
        ));
    }
    let i = healthy(0);
    assert!(abort_check(&s, &i, &windows).is_none());
}

#[test]
fn an_undecided_step_acts_per_on_inconclusive_after_max_step_duration() {
    let mut s = spec();
    let mut i = healthy(0);
    // 0.9 % against a 1 % line: not shown either way.
    i.canary = arm(800, 7);
    i.stable = arm(15_200, 137);
    i.elapsed = Duration::from_secs(599);
    let lat = latency(&s, 800, 40, 40);
    assert_eq!(evaluate(&s, &i, &lat).verdict, Verdict::Hold);
    i.elapsed = Duration::from_secs(600);
    let d = evaluate(&s, &i, &lat);
    assert_eq!(
        (d.verdict, d.inconclusive),
        (Verdict::Pause, true),
        "{}",
        d.reason
    );
    assert!(d.reason.starts_with("inconclusive: step 0"), "{}", d.reason);
    assert!(d.reason.contains("pause for an operator"), "{}", d.reason);
    s.on_inconclusive = OnInconclusive::Rollback;
    assert_eq!(evaluate(&s, &i, &lat).verdict, Verdict::Rollback);
    s.on_inconclusive = OnInconclusive::Promote;
    assert_eq!(evaluate(&s, &i, &lat).verdict, Verdict::Promote);
}

#[test]
fn shadow_mismatches_gate_only_when_configured_and_compared() {
    let mut s = spec();
    s.gates.max_shadow_mismatch_rate = Some(0.01);
    let mut i = healthy(0);
    let lat = latency(&s, 20_000, 40, 40);
    assert_eq!(
        gate(&evaluate(&s, &i, &lat), "shadow_mismatch_rate").status,
        GateStatus::NotApplicable
    );
    i.shadow = ShadowCounts {
        compared: 1000,
        mismatched: 50,
    };
    let d = evaluate(&s, &i, &lat);
    assert_eq!(gate(&d, "shadow_mismatch_rate").status, GateStatus::Fail);
    assert_eq!(d.verdict, Verdict::Rollback);
}

#[test]
fn blue_green_watches_after_the_switch() {
    let mut s = spec();
    s.strategy = Strategy::BlueGreen;
    s.steps = vec![0, 100];
    s.post_promotion = Duration::from_secs(300);
    let lat = latency(&s, 20_000, 40, 40);
    let d = evaluate(&s, &healthy(0), &lat);
    assert!(d.reason.contains("step 1 (100%)"), "{}", d.reason);
    let d = evaluate(&s, &healthy(1), &lat);
    assert_eq!(d.verdict, Verdict::Hold, "the watch is 300 s: {}", d.reason);
}

#[test]
fn a_decision_record_names_the_test_its_confidence_and_what_is_missing() {
    let s = spec();
    let mut i = healthy(0);
    i.canary = arm(2000, 10);
    i.stable = arm(38_000, 190);
    let d = evaluate(&s, &i, &latency(&s, 2000, 40, 40));
    let v = serde_json::to_value(&d).unwrap();
    let g = v["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "error_rate")
        .unwrap();
    assert_eq!(g["status"], "inconclusive", "{v:#}");
    assert!(g["test"].as_str().unwrap().contains("SPRT"));
    assert!(g["confidence_not_worse"].as_f64().unwrap() > 0.0);
    assert!(
        g["missing"].as_str().unwrap().starts_with("need about "),
        "{g:#}"
    );
    assert_eq!(v["thresholds"]["confidence"], 0.95);
    assert_eq!(v["inconclusive"], false);
}
