//! Sequential tests with stated error rates for the rollout gates: valid however often they are
//! looked at (every tick) and however long a step runs. Pure arithmetic on counts, so a fleet's
//! summed counters are as good an input as one replica's.
//!
//! Every gate asks whether a *share* is above or below a line: the canary's failed requests
//! (line: `max_error_rate`), its requests slower than `max_p99_ms` (line: 1 %, which is what
//! "p99 above the ceiling" means), shadow answers that differ, or the canary's share of all the
//! route's failures (line: what that share would be were the canary exactly `max_error_ratio`
//! times worse than stable). For a share the tests here give an **e-value**, `E`: while the
//! share stays on the null side of the line, `E` is bounded by a nonnegative supermartingale
//! that starts at 1, so by Ville's inequality it *ever* reaches `1/α` with probability at most
//! `α`. Acting when `E >= 1/α` therefore has error rate at most `α`, with no correction for
//! looking every 100 ms and no upper limit on how long one looks; `1 - 1/E` is the confidence
//! reached so far.
//!
//! `E` is a mixture of likelihood ratios (Wald's SPRT) over a fixed grid of alternatives with
//! equal weights, Robbins' method of mixtures. Each ratio, alternative `q` against the line `b`
//! on the far side of the truth, has expectation at most 1 per observation, so it stays a
//! supermartingale even when the true share drifts over time (on the null side); the mixture
//! needs no choice of one alternative and loses at most `ln(grid size)` against the best one.
//!
//! Sources:
//! - A. Wald (1945), *Sequential tests of statistical hypotheses*, Ann. Math. Statist. 16.
//! - J. Ville (1939), *Étude critique de la notion de collectif*: the maximal inequality.
//! - H. Robbins (1970), *Statistical methods related to the law of the iterated logarithm*,
//!   Ann. Math. Statist. 41: mixtures of likelihood ratios, confidence sequences.
//! - S. Howard, A. Ramdas, J. McAuliffe, J. Sekhon (2021), *Time-uniform, nonparametric,
//!   nonasymptotic confidence sequences*, Ann. Statist. 49.
//! - S. Howard, A. Ramdas (2022), *Sequential estimation of quantiles with applications to
//!   A/B-testing and best-arm identification*, Bernoulli 28: quantile bounds from the
//!   Bernoulli count of samples past a value ([`quantile_bound`]).
//! - A. Ramdas, P. Grünwald, V. Vovk, G. Shafer (2023), *Game-theoretic statistics and safe
//!   anytime-valid inference*, Statist. Sci. 38: e-values and e-processes; a weighted sum of
//!   e-processes with weights summing to 1 is one, which is how [`window_weight`] lets the
//!   abort rule look at windows started later in a step (a mixture over change points, as in
//!   J. Shin, A. Ramdas, A. Rinaldo (2024), *E-detectors*, J. Amer. Statist. Assoc., here with
//!   summable weights so that the bound holds for all time, not as an average run length).
//! - Comparing two rates by the canary's share of all failures (conditional on the total, that
//!   share is binomial): J. Przyborowski, H. Wilenski (1940), *Homogeneity of results in testing
//!   samples from Poisson series*, Biometrika 31; E. Lehmann, J. Romano, *Testing Statistical
//!   Hypotheses*, §4.5.

use std::sync::LazyLock;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Which side of its line a share is shown to be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Above,
    Below,
}

/// Alternatives above a line, as multiples of the odds of the first (lowest) alternative: from
/// a share just past the line to shares near 1, so subtle and gross regressions both count.
const ABOVE: [f64; 10] = [1.0, 1.15, 1.35, 1.8, 2.7, 4.5, 9.0, 27.0, 90.0, 900.0];
/// Alternatives below a line, as divisors of the line's odds; the last is a share of zero
/// (what a clean canary looks like: no failure at all).
const BELOW: [f64; 9] = [1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0, f64::INFINITY];
/// The first alternative above a line, by default: its odds are this many times the line's.
const FIRST_ABOVE: f64 = 1.1;

fn odds(p: f64) -> f64 {
    p / (1.0 - p)
}

fn share(odds: f64) -> f64 {
    odds / (1.0 + odds)
}

/// The default first alternative above `line`.
pub fn first_above(line: f64) -> f64 {
    share(odds(line.clamp(0.0, 0.999_999)) * FIRST_ABOVE)
}

/// `ln(e^a + e^b)`, exact for infinities.
pub fn ln_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m.is_infinite() {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// `ln Σ e^t` over `terms` (at most 16 of them; each computed once).
fn ln_sum(terms: impl Iterator<Item = f64>) -> f64 {
    let mut buf = [0.0f64; 16];
    let mut len = 0;
    for t in terms.take(buf.len()) {
        buf[len] = t;
        len += 1;
    }
    let terms = &buf[..len];
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
}

/// `ln E` for "the share is on `side` of `line`" after `x` events in `n` trials (counts may be
/// fractional when scaled by [`scale_needed`]). `first` is the lowest alternative above the
/// line (ignored below it); it must exceed the line. 0 (E = 1) without trials; `-inf` (E
/// reported as 0; it is at most 1) while the observed share is on the null side.
pub fn ln_e(side: Side, x: f64, n: f64, line: f64, first: f64) -> f64 {
    if n <= 0.0 {
        return 0.0;
    }
    let x = x.clamp(0.0, n);
    // Lines at the ends: no test, just what one observation proves.
    match side {
        Side::Above if line <= 0.0 => return if x > 0.0 { f64::INFINITY } else { 0.0 },
        Side::Above if line >= 1.0 => return f64::NEG_INFINITY,
        Side::Below if line <= 0.0 => return f64::NEG_INFINITY,
        Side::Below if line >= 1.0 => return if x < n { f64::INFINITY } else { 0.0 },
        _ => {}
    }
    // Every alternative lies past the line, so when the observed share is on the null side of
    // it no likelihood ratio exceeds 1: E <= 1, reported as 0 (and not computed).
    let toward = match side {
        Side::Above => x > n * line,
        Side::Below => x < n * line,
    };
    if !toward {
        return f64::NEG_INFINITY;
    }
    let ob = odds(line);
    let ln_ob = ob.ln();
    let ln_1ob = ob.ln_1p();
    // One alternative's ln likelihood ratio: x ln(q/b) + (n - x) ln((1-q)/(1-b)), in odds:
    // x ln(o/ob) - n ln((1+o)/(1+ob)).
    let term =
        |o: f64, ln_o: f64, weight: f64| weight + x * (ln_o - ln_ob) - n * (o.ln_1p() - ln_1ob);
    let (ln_above, ln_below) = &*LN_GRID;
    match side {
        Side::Above => {
            let o1 = odds(first.clamp(line, 0.999_999)).max(ob * 1.0001);
            let ln_o1 = o1.ln();
            let w = -(ABOVE.len() as f64).ln();
            ln_sum(
                ABOVE
                    .iter()
                    .zip(ln_above)
                    .map(|(m, ln_m)| term(o1 * m, ln_o1 + ln_m, w)),
            )
        }
        Side::Below => {
            // A third of the weight on a share of zero, the rest spread evenly: a clean canary
            // (no failure at all, the common case) is shown clean sooner.
            let w = (2.0 / 3.0 / (BELOW.len() - 1) as f64).ln();
            let zero = if x > 0.0 {
                f64::NEG_INFINITY
            } else {
                (1.0f64 / 3.0).ln() + n * ln_1ob
            };
            ln_add(
                ln_sum(
                    BELOW[..BELOW.len() - 1]
                        .iter()
                        .zip(ln_below)
                        .map(|(m, ln_m)| term(ob / m, ln_ob - ln_m, w)),
                ),
                zero,
            )
        }
    }
}

/// `ln` of each multiplier of [`ABOVE`] and of each finite divisor of [`BELOW`].
static LN_GRID: LazyLock<([f64; ABOVE.len()], [f64; BELOW.len() - 1])> = LazyLock::new(|| {
    let mut below = [0.0; BELOW.len() - 1];
    for (l, m) in below.iter_mut().zip(BELOW) {
        *l = m.ln();
    }
    (ABOVE.map(f64::ln), below)
});

/// An upper bound on `ln_e(Side::Above, x, n, line, _)` for any alternatives: the likelihood
/// ratio at the observed share (0 when that share is not above the line). Two logarithms, so
/// the abort rule can skip the mixtures when even this bound is short of its target.
pub fn ln_bound_above(x: f64, n: f64, line: f64) -> f64 {
    if n <= 0.0 || x <= 0.0 {
        return 0.0;
    }
    let p = (x / n).min(1.0);
    if p <= line {
        return 0.0;
    }
    if line <= 0.0 {
        return f64::INFINITY;
    }
    let rest = if p < 1.0 {
        (n - x) * ((1.0 - p) / (1.0 - line)).ln()
    } else {
        0.0
    };
    x * (p / line).ln() + rest
}

/// The confidence an `ln E` amounts to: `1 - 1/E`, 0 below `E = 1`.
pub fn confidence(ln_e: f64) -> f64 {
    if ln_e <= 0.0 { 0.0 } else { -(-ln_e).exp_m1() }
}

/// The `ln E` a confidence needs: `ln(1 / (1 - confidence))`.
pub fn ln_target(confidence: f64) -> f64 {
    -(1.0 - confidence).clamp(1e-300, 1.0).ln()
}

/// By how much the counts behind `ln_e_at` (its argument scales every count) would have to
/// grow, at the rates seen so far, for it to reach `target`: 1 when it already has, `None` when
/// no amount would (the rates sit on the line or on the other side of it).
pub fn scale_needed(ln_e_at: impl Fn(f64) -> f64, target: f64) -> Option<f64> {
    const MAX: f64 = 1e7;
    if ln_e_at(1.0) >= target {
        return Some(1.0);
    }
    if ln_e_at(MAX) < target {
        return None;
    }
    // ln E is a log-sum-exp of lines in the scale, so convex: one crossing between the ends.
    // 16 halvings of ln(1e7) put the scale within 0.03 %: more than an estimate needs.
    let (mut lo, mut hi) = (0.0f64, MAX.ln());
    for _ in 0..16 {
        let mid = (lo + hi) / 2.0;
        if ln_e_at(mid.exp()) >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi.exp())
}

/// The canary's share of all the route's failures when its failure rate is `ratio` times
/// stable's and it takes `canary_share` of the two arms' requests.
pub fn failure_share(ratio: f64, canary_share: f64) -> f64 {
    let c = ratio * canary_share;
    let d = c + (1.0 - canary_share);
    if d <= 0.0 { 1.0 } else { c / d }
}

/// Weight of the `j`-th window of a step in the abort rule's mixture: half for the whole step
/// (`j = 0`), `1 / (2 j (j+1))` for the window started after the `j`-th block of canary
/// requests. The weights sum to 1 over every window there could ever be, so the weighted sum of
/// the windows' e-values is itself an e-value: a step may run forever and a false abort still
/// has probability at most `α`.
pub fn window_weight(j: u32) -> f64 {
    if j == 0 {
        0.5
    } else {
        let j = f64::from(j);
        1.0 / (2.0 * j * (j + 1.0))
    }
}

/// Samples of `h` recorded above `v` (values are bucket tops, so within the histogram's 0.1 %).
pub fn count_above(h: &Histogram<u64>, v: f64) -> u64 {
    h.iter_recorded()
        .filter(|r| r.value_iterated_to() as f64 > v)
        .map(|r| r.count_at_value())
        .sum()
}

/// A time-uniform confidence bound on the quantile `p` of what `h` recorded (Howard & Ramdas
/// 2022): the upper bound ([`Side::Below`]) is the least value `v` such that the share of
/// samples above `v` is shown to be below `1 - p`; the lower bound ([`Side::Above`]) the greatest
/// `v` such that the share at or above it is shown to be above `1 - p`. `target` is the `ln E`
/// the bound needs; `None` when the samples cannot bound it yet.
pub fn quantile_bound(h: &Histogram<u64>, p: f64, side: Side, target: f64) -> Option<u64> {
    let n = h.len() as f64;
    let tail = 1.0 - p;
    // From the top down: few buckets lie past a high quantile.
    let mut desc: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|r| (r.value_iterated_to(), r.count_at_value()))
        .collect();
    desc.reverse();
    let mut above = 0u64;
    let mut found = None;
    for (value, count) in desc {
        match side {
            Side::Below => {
                // `above` counts the samples past `value`.
                if ln_e(Side::Below, above as f64, n, tail, 0.0) >= target {
                    found = Some(value);
                } else {
                    break;
                }
                above += count;
            }
            Side::Above => {
                above += count;
                if ln_e(Side::Above, above as f64, n, tail, first_above(tail)) >= target {
                    return Some(value);
                }
            }
        }
    }
    found
}

#[cfg(test)]
#[path = "evidence_tests.rs"]
mod tests;
