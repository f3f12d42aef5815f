//! The tests' promises on numbers: error rates under continuous monitoring, speed on a clear
//! case, what "missing evidence" estimates, quantile bounds from a histogram.

use super::*;
use crate::stats::histogram::new_histogram;

/// A small deterministic generator (splitmix64), so the error-rate checks are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Share of `runs` runs of `trials` Bernoulli(`p`) trials in which `ln_e(side, .., line)`, looked
/// at after every trial, ever reached `target`.
fn ever_crossed(p: f64, side: Side, line: f64, target: f64, runs: usize, trials: usize) -> f64 {
    let mut rng = Rng(7);
    let mut crossed = 0;
    for _ in 0..runs {
        let mut x = 0.0;
        for n in 1..=trials {
            if rng.next() < p {
                x += 1.0;
            }
            if ln_e(side, x, n as f64, line, first_above(line)) >= target {
                crossed += 1;
                break;
            }
        }
    }
    crossed as f64 / runs as f64
}

#[test]
fn looking_after_every_request_keeps_the_stated_error_rate() {
    // Exactly on the line, the hardest case for the null: at 80 % confidence (so that the
    // bound shows with a few hundred runs) at most 20 % may ever cross. Ville's bound is
    // nearly tight here, so allow two standard errors of 300 runs (0.046) for sampling.
    let target = ln_target(0.8);
    let above = ever_crossed(0.01, Side::Above, 0.01, target, 300, 3000);
    assert!(above <= 0.2 + 0.046, "{above} of runs at the line crossed");
    let below = ever_crossed(0.01, Side::Below, 0.01, target, 300, 3000);
    assert!(below <= 0.2 + 0.046, "{below} of runs at the line crossed");
    // A canary at half the line is almost never called worse, however long it runs.
    let half = ever_crossed(0.005, Side::Above, 0.01, ln_target(0.95), 200, 10_000);
    assert!(half <= 0.01, "{half}");
}

#[test]
fn a_canary_failing_ten_percent_is_called_worse_within_a_few_dozen_requests() {
    let target = ln_target(0.999);
    // One failure in ten, evenly spread, against a 1 % line.
    let n = (1..1000)
        .find(|&n| {
            ln_e(
                Side::Above,
                (n / 10) as f64,
                n as f64,
                0.01,
                first_above(0.01),
            ) >= target
        })
        .unwrap();
    assert!((40..=90).contains(&n), "{n} requests");
    // Nothing decides on a handful, however bad.
    assert!(ln_e(Side::Above, 1.0, 1.0, 0.01, first_above(0.01)) < target);
}

#[test]
fn a_clean_canary_is_shown_below_the_line_after_enough_requests() {
    let target = ln_target(0.95);
    let n = (1..5000)
        .find(|&n| ln_e(Side::Below, 0.0, n as f64, 0.01, 0.0) >= target)
        .unwrap();
    assert!((300..=700).contains(&n), "{n} requests");
    // At the line, never.
    assert!(ln_e(Side::Below, 100.0, 10_000.0, 0.01, 0.0) < 0.0);
}

#[test]
fn the_missing_evidence_is_estimated_from_the_rates_so_far() {
    let target = ln_target(0.95);
    // 2 failures in 400: 0.5 % against a 1 % line: more of the same would show it below.
    let at = |k: f64| ln_e(Side::Below, 2.0 * k, 400.0 * k, 0.01, 0.0);
    let k = scale_needed(at, target).unwrap();
    assert!(k > 1.0);
    assert!(at(k) >= target && at(k * 0.98) < target, "{k}");
    // At the line, no amount of data decides.
    assert_eq!(
        scale_needed(|k| ln_e(Side::Below, 4.0 * k, 400.0 * k, 0.01, 0.0), target),
        None
    );
    assert_eq!(scale_needed(|_| 10.0, target), Some(1.0));
}

#[test]
fn lines_at_the_ends_are_decided_by_one_observation() {
    assert_eq!(ln_e(Side::Above, 1.0, 50.0, 0.0, 0.0), f64::INFINITY);
    assert_eq!(ln_e(Side::Above, 0.0, 50.0, 0.0, 0.0), 0.0);
    assert_eq!(
        ln_e(Side::Above, 0.0, 50.0, 0.01, 0.02),
        f64::NEG_INFINITY,
        "no evidence above the line from a share below it"
    );
    assert_eq!(ln_e(Side::Below, 0.0, 50.0, 0.0, 0.0), f64::NEG_INFINITY);
    assert_eq!(ln_e(Side::Below, 3.0, 50.0, 1.0, 0.0), f64::INFINITY);
    assert_eq!(
        ln_e(Side::Above, 3.0, 0.0, 0.01, 0.02),
        0.0,
        "no trials, no evidence"
    );
}

#[test]
fn the_failure_share_follows_the_ratio_and_the_traffic_split() {
    assert!((failure_share(1.0, 0.05) - 0.05).abs() < 1e-12);
    assert!((failure_share(2.0, 0.5) - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(failure_share(2.0, 1.0), 1.0);
}

#[test]
fn window_weights_sum_to_at_most_one() {
    let total: f64 = (0..100_000).map(window_weight).sum();
    assert!(total <= 1.0 && total > 0.9999, "{total}");
}

#[test]
fn quantile_bounds_bracket_the_quantile_and_narrow_with_data() {
    // 10,000 samples: 1..=10,000 µs, so p99 is 9,900 µs.
    let mut h = new_histogram();
    for v in 1..=10_000u64 {
        h.record(v).unwrap();
    }
    let target = ln_target(0.95);
    let hi = quantile_bound(&h, 0.99, Side::Below, target).unwrap();
    let lo = quantile_bound(&h, 0.99, Side::Above, target).unwrap();
    assert!(lo < 9_900 && 9_900 < hi, "{lo}..{hi}");
    assert!(
        lo > 9_700 && hi < 10_000,
        "tight with 10,000 samples: {lo}..{hi}"
    );
    let past = count_above(&h, 9_000.0);
    assert!(
        (995..=1_005).contains(&past),
        "{past}: exact within a bucket"
    );

    // 50 samples cannot bound a p99 from above.
    let mut few = new_histogram();
    for v in 1..=50u64 {
        few.record(v * 100).unwrap();
    }
    assert_eq!(quantile_bound(&few, 0.99, Side::Below, target), None);
}
