//! A rollout simulator over the real, pure rollout engine and policy (and, for comparison, the
//! policy they replaced, [`old`]): seeded synthetic traffic for both arms at a given rate, fed
//! tick by tick (100 ms, as the controller does) until the rollout ends. Shared by the bench
//! that prints the full table (`cargo bench --bench rollout_sim`) and by the test that holds
//! CI to the targets (`tests/rollout_sim.rs`).
//!
//! Each rollout draws its traffic from its own seed; the old and the new policy get the same
//! seed, so they see the same requests for as long as they hold the same weights (common
//! random numbers), and their difference is the policies', not the luck of the draw.
#![allow(dead_code)]

#[path = "old.rs"]
pub mod old;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use switchyard::config::rollout::RolloutSpec;
use switchyard::rollout::engine::{Counts, Latency, Rollout, Sample};
use switchyard::rollout::machine::State;
use tokio::time::Instant;

pub const TICK: Duration = Duration::from_millis(100);

/// splitmix64: small, fast and good enough for traffic.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn u01(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.u01().max(1e-300), self.u01());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Poisson by inversion for small means, a rounded normal for large ones.
    pub fn poisson(&mut self, mean: f64) -> u64 {
        self.poisson_with(mean, (-mean).exp())
    }

    /// Poisson with `exp(-mean)` computed by the caller (it is the same tick after tick).
    fn poisson_with(&mut self, mean: f64, exp_neg_mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 40.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let (mut k, mut p) = (0u64, exp_neg_mean);
        let mut cdf = p;
        let u = self.u01();
        while u > cdf && k < 1000 {
            k += 1;
            p *= mean / k as f64;
            cdf += p;
        }
        k
    }

    /// Binomial: exact (inversion) while the expected count of the rarer outcome is small,
    /// a rounded normal past that.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let mean = n as f64 * p;
        if mean > 30.0 {
            let sd = (mean * (1.0 - p)).sqrt();
            return (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64;
        }
        let q = 1.0 - p;
        let mut pk = q.powf(n as f64);
        let (mut k, mut cdf) = (0u64, pk);
        let u = self.u01();
        while u > cdf && k < n {
            pk *= (n - k) as f64 / (k + 1) as f64 * p / q;
            k += 1;
            cdf += pk;
        }
        k
    }
}

/// Time to the response head, a discrete distribution: (ms, share). p50 5 ms, p99 150 ms.
pub const LATENCY: [(u64, f64); 6] = [
    (5, 0.50),
    (10, 0.30),
    (20, 0.15),
    (50, 0.04),
    (150, 0.009),
    (400, 0.001),
];

/// A one-digit histogram: the engine and policy take any `Histogram<u64>`, and this one (3 KB)
/// is cheap to clone on every read; the latencies of [`LATENCY`] still fall in distinct
/// buckets, on the same side of the 500 ms ceiling.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 1).expect("constant bounds")
}

/// What both arms do: their failure rates (the canary's from `bad_from` on; before it, the
/// stable rate), latencies scaled by a factor, at `rate` requests a second over the route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    pub rate: f64,
    pub stable_error: f64,
    pub canary_error: f64,
    /// Time into the rollout at which the canary starts failing at `canary_error`.
    pub bad_from: Duration,
    pub canary_slower: f64,
}

/// Each part's mean per tick and `exp(-mean)`: canary failures, canary successes, stable
/// failures, stable successes.
type Means = [(f64, f64); 4];

/// The traffic of one rollout, drawn tick by tick for the weights in force. Requests arrive
/// as a Poisson process; split at random between the arms and into failures and successes,
/// each of the four parts is again Poisson and independent of the others (Poisson splitting),
/// so a tick is four draws.
pub struct Stream {
    rng: Rng,
    t: Traffic,
    pub totals: Sample,
    /// Canary requests that failed since the canary went bad (the blast radius).
    pub bad_failures: u64,
    /// The weight and whether the canary is bad, and the parts' means for them.
    means: Option<(u32, bool, Means)>,
    lat: RefCell<LatencyState>,
}

struct LatencyState {
    rng: Rng,
    canary: Histogram<u64>,
    stable: Histogram<u64>,
    recorded: (u64, u64),
    canary_slower: f64,
}

impl LatencyState {
    fn top_up(&mut self, canary: u64, stable: u64) {
        let fill = |h: &mut Histogram<u64>, mut n: u64, scale: f64, rng: &mut Rng| {
            let mut left = 1.0;
            for (ms, share) in LATENCY {
                let k = if left <= share {
                    n
                } else {
                    rng.binomial(n, share / left)
                };
                let _ = h.record_n(((ms as f64 * scale) * 1000.0) as u64, k);
                n -= k;
                left -= share;
            }
        };
        let (c, s) = self.recorded;
        let slower = self.canary_slower;
        fill(&mut self.canary, canary - c, slower, &mut self.rng);
        fill(&mut self.stable, stable - s, 1.0, &mut self.rng);
        self.recorded = (canary, stable);
    }
}

impl Stream {
    pub fn new(t: Traffic, seed: u64) -> Self {
        Stream {
            rng: Rng::new(seed),
            t,
            totals: Sample::default(),
            bad_failures: 0,
            means: None,
            lat: RefCell::new(LatencyState {
                rng: Rng::new(seed.wrapping_mul(31).wrapping_add(7)),
                canary: histogram(),
                stable: histogram(),
                recorded: (0, 0),
                canary_slower: t.canary_slower,
            }),
        }
    }

    /// The cumulative readings after one more tick at `canary_weight` percent.
    pub fn tick(&mut self, at: Duration, canary_weight: u32) -> Sample {
        let bad = at >= self.t.bad_from;
        let t = self.t;
        let means = match self.means {
            Some((w, b, m)) if w == canary_weight && b == bad => m,
            _ => {
                let per_tick = t.rate * TICK.as_secs_f64();
                let c = per_tick * f64::from(canary_weight) / 100.0;
                let s = per_tick - c;
                let ce = if bad { t.canary_error } else { t.stable_error };
                let m = [
                    c * ce,
                    c * (1.0 - ce),
                    s * t.stable_error,
                    s * (1.0 - t.stable_error),
                ]
                .map(|m| (m, (-m).exp()));
                self.means = Some((canary_weight, bad, m));
                m
            }
        };
        let [cf, cs, sf, ss] = means.map(|(m, e)| self.rng.poisson_with(m, e));
        if bad {
            self.bad_failures += cf;
        }
        let add = |a: &mut Counts, r: u64, f: u64| {
            a.requests += r;
            a.failures += f;
        };
        add(&mut self.totals.canary, cf + cs, cf);
        add(&mut self.totals.stable, sf + ss, sf);
        self.totals
    }

    /// The arms' cumulative latency histograms, drawn for the requests counted so far.
    pub fn latency(&self) -> Latency {
        let mut l = self.lat.borrow_mut();
        l.top_up(self.totals.canary.requests, self.totals.stable.requests);
        (l.canary.clone(), l.stable.clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Promoted,
    RolledBack,
    /// Held for lack of evidence: paused by `on_inconclusive`, or still holding at the horizon.
    Held,
}

#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub end: End,
    /// Time into the rollout at which it ended.
    pub secs: f64,
    /// Canary requests over the whole rollout.
    pub canary_requests: u64,
    /// Canary requests that failed after the canary went bad.
    pub bad_failures: u64,
    pub abort: bool,
}

/// Runs one rollout of `spec` with the product's engine and policy.
pub fn run_new(spec: &Arc<RolloutSpec>, t: Traffic, seed: u64, horizon: Duration) -> Run {
    let start = Instant::now();
    let mut stream = Stream::new(t, seed);
    let mut r = Rollout::new("sim".into(), Arc::clone(spec), start);
    let _ = r.observe(start, 0, Sample::default(), || stream.latency());
    let mut at = Duration::ZERO;
    while at < horizon {
        at += TICK;
        let sample = stream.tick(at, r.canary_weight());
        let now = start + at;
        if r.observe(now, at.as_millis() as u64, sample, || stream.latency())
            .is_none()
        {
            continue;
        }
        let end = match r.state {
            State::Promoted => End::Promoted,
            State::RolledBack | State::Aborted => End::RolledBack,
            State::Paused { .. } => End::Held,
            _ => continue,
        };
        let abort = r.decisions.back().is_some_and(|d| d.decision.abort);
        return finish(end, at, &stream, abort);
    }
    finish(End::Held, at, &stream, false)
}

/// Runs one rollout of `spec` with the policy of before issue 15.
pub fn run_old(spec: &RolloutSpec, t: Traffic, seed: u64, horizon: Duration) -> Run {
    let mut stream = Stream::new(t, seed);
    let mut r = old::OldRollout::new(spec, Duration::ZERO);
    let mut at = Duration::ZERO;
    while at < horizon {
        at += TICK;
        let sample = stream.tick(at, r.canary_weight());
        r.observe(at, sample, || stream.latency());
        let end = match r.state {
            old::OldState::Promoted => End::Promoted,
            old::OldState::RolledBack => End::RolledBack,
            old::OldState::Step(_) => continue,
        };
        return finish(end, at, &stream, r.aborted);
    }
    finish(End::Held, at, &stream, false)
}

fn finish(end: End, at: Duration, s: &Stream, abort: bool) -> Run {
    Run {
        end,
        secs: at.as_secs_f64(),
        canary_requests: s.totals.canary.requests,
        bad_failures: s.bad_failures,
        abort,
    }
}

/// What a scenario's rollouts came to.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub runs: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    pub held: usize,
    /// Seconds and canary requests to roll back, and the failed canary requests by then.
    pub rollback_secs: Vec<f64>,
    pub rollback_requests: Vec<u64>,
    pub rollback_failures: Vec<u64>,
}

impl Tally {
    pub fn add(&mut self, r: Run) {
        self.runs += 1;
        match r.end {
            End::Promoted => self.promoted += 1,
            End::Held => self.held += 1,
            End::RolledBack => {
                self.rolled_back += 1;
                self.rollback_secs.push(r.secs);
                self.rollback_requests.push(r.canary_requests);
                self.rollback_failures.push(r.bad_failures);
            }
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.runs += o.runs;
        self.promoted += o.promoted;
        self.rolled_back += o.rolled_back;
        self.held += o.held;
        self.rollback_secs.extend(o.rollback_secs);
        self.rollback_requests.extend(o.rollback_requests);
        self.rollback_failures.extend(o.rollback_failures);
    }

    pub fn share(&self, n: usize) -> f64 {
        n as f64 / self.runs.max(1) as f64
    }

    /// The `q` quantile of the seconds to roll back, if any were.
    pub fn secs_q(&self, q: f64) -> Option<f64> {
        quantile(&self.rollback_secs, q)
    }

    pub fn requests_q(&self, q: f64) -> Option<f64> {
        let v: Vec<f64> = self.rollback_requests.iter().map(|&r| r as f64).collect();
        quantile(&v, q)
    }

    pub fn failures_q(&self, q: f64) -> Option<f64> {
        let v: Vec<f64> = self.rollback_failures.iter().map(|&r| r as f64).collect();
        quantile(&v, q)
    }
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[((s.len() - 1) as f64 * q).round() as usize])
}

/// Runs `rollouts` rollouts of both policies on `threads` threads: (old, new).
pub fn run_both(
    spec: &Arc<RolloutSpec>,
    t: Traffic,
    rollouts: usize,
    seed: u64,
    horizon: Duration,
    threads: usize,
) -> (Tally, Tally) {
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let spec = Arc::clone(spec);
                scope.spawn(move || {
                    let (mut old, mut new) = (Tally::default(), Tally::default());
                    for i in (k..rollouts).step_by(threads) {
                        let s = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
                        old.add(run_old(&spec, t, s, horizon));
                        new.add(run_new(&spec, t, s, horizon));
                    }
                    (old, new)
                })
            })
            .collect();
        let (mut old, mut new) = (Tally::default(), Tally::default());
        for h in handles {
            let (o, n) = h.join().expect("a simulation thread panicked");
            old.merge(o);
            new.merge(n);
        }
        (old, new)
    })
}

/// The spec of a route's `rollout:` block written in YAML flow style, as the product parses it.
pub fn spec(rollout: &str) -> Arc<RolloutSpec> {
    let yaml = format!(
        "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams:\n  s: {{ backends: [\"127.0.0.1:1\"] }}\n  c: {{ backends: [\"127.0.0.1:2\"] }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: s, weight: 100 }}, {{ upstream: c, weight: 0 }}]\n    rollout: {rollout}\n"
    );
    let config = switchyard::config::parse_str(&yaml).expect("a valid simulated rollout");
    config.routes[0].rollout.clone().expect("a rollout")
}

/// The longest a rollout of `spec` can take before every step has had its `max_step_duration`.
pub fn horizon(spec: &RolloutSpec) -> Duration {
    spec.max_step_duration * spec.step_count() as u32 + Duration::from_secs(1)
}
