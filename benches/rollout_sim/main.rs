//! The rollout simulator's full table: the policy of before issue 15 and the current one, side
//! by side on the same seeded streams (see `sim.rs`).
//!
//!   cargo bench --bench rollout_sim                          # 10,000 rollouts a scenario
//!   cargo bench --bench rollout_sim -- --rollouts 2000 --step-interval 5s --threads 2
//!
//! Scenarios: a canary equal to stable, 2x, 5x and 20x worse, at 0.1 %, 0.5 % and 2 % base
//! error and 10, 100 and 1,000 requests a second; then a canary that turns bad (10 %) 5 s into
//! a long first step at 1,000 req/s, as `load-tests/rollout-blast.sh` runs it. Default gates,
//! except that the 2 % rows use `max_error_rate: 0.05` (with the default 1 %, a canary at 2 %
//! is past the absolute limit and both policies rightly roll it back, equal to stable or not).
//! Run without `--bench` (as `cargo test --all-targets` does), it runs one rollout of each
//! policy as a smoke test.

mod sim;

use std::time::{Duration, Instant};

use sim::{Tally, Traffic};

struct Args {
    rollouts: usize,
    threads: usize,
    step_interval: String,
    bench: bool,
    /// Only the scenarios whose label ("0.5% 1000 equal") contains this.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        rollouts: 10_000,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(2)),
        step_interval: "30s".into(),
        bench: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--rollouts" => {
                a.rollouts = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.rollouts)
            }
            "--threads" => a.threads = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.threads),
            "--step-interval" => a.step_interval = it.next().unwrap_or(a.step_interval),
            "--only" => a.only = it.next(),
            _ => {}
        }
    }
    a
}

fn pct(t: &Tally, n: usize) -> String {
    format!("{:.2}%", t.share(n) * 100.0)
}

fn secs(t: &Tally) -> String {
    match (t.secs_q(0.5), t.secs_q(0.9)) {
        (Some(m), Some(p)) => format!("{m:.1} / {p:.1}"),
        _ => "-".into(),
    }
}

fn reqs(t: &Tally) -> String {
    match (t.requests_q(0.5), t.requests_q(0.9)) {
        (Some(m), Some(p)) => format!("{m:.0} / {p:.0}"),
        _ => "-".into(),
    }
}

fn main() {
    let a = args();
    if !a.bench {
        let spec = sim::spec("{ strategy: canary, stable: s, canary: c, step_interval: 5s }");
        let t = Traffic {
            rate: 1000.0,
            stable_error: 0.005,
            canary_error: 0.05,
            bad_from: Duration::ZERO,
            canary_slower: 1.0,
        };
        let h = sim::horizon(&spec);
        let old = sim::run_old(&spec, t, 1, h);
        let new = sim::run_new(&spec, t, 1, h);
        println!("rollout_sim smoke: a 10x-worse canary: old {old:?}, new {new:?}");
        return;
    }
    let started = Instant::now();
    println!(
        "Rollout simulator: {} rollouts per scenario, steps [5, 20, 50, 100] every {}, default gates \
         (2% base: max_error_rate 0.05), old = before issue 15, new = now, same seeds.\n\
         'rolled back' of an equal canary is a false rollback; 'promoted' of a worse one a false promotion; \
         'held': paused by on_inconclusive after max_step_duration. Time and canary requests to roll back: median / p90.\n",
        a.rollouts, a.step_interval
    );
    println!(
        "| base | req/s | canary | old rolled back | new rolled back | old promoted | new promoted | old held | new held | old s to roll back | new s to roll back | old canary req to roll back | new canary req to roll back | sim s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for base in [0.001, 0.005, 0.02] {
        let limit = if base >= 0.02 { 0.05 } else { 0.01 };
        let spec = sim::spec(&format!(
            "{{ strategy: canary, stable: s, canary: c, step_interval: {}, gates: {{ max_error_rate: {limit} }} }}",
            a.step_interval
        ));
        let horizon = sim::horizon(&spec);
        for rate in [10.0, 100.0, 1000.0] {
            for (name, factor) in [("equal", 1.0), ("2x", 2.0), ("5x", 5.0), ("20x", 20.0)] {
                let t = Traffic {
                    rate,
                    stable_error: base,
                    canary_error: (base * factor).min(1.0),
                    bad_from: Duration::ZERO,
                    canary_slower: 1.0,
                };
                let label = format!("{:.1}% {rate:.0} {name}", base * 100.0);
                if a.only.as_ref().is_some_and(|o| !label.contains(o.as_str())) {
                    continue;
                }
                let clock = Instant::now();
                let seed = (base * 1e6) as u64 * 1000 + rate as u64 * 10 + factor as u64;
                let (old, new) = sim::run_both(&spec, t, a.rollouts, seed, horizon, a.threads);
                println!(
                    "| {:.1}% | {rate:.0} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                    base * 100.0,
                    pct(&old, old.rolled_back),
                    pct(&new, new.rolled_back),
                    pct(&old, old.promoted),
                    pct(&new, new.promoted),
                    pct(&old, old.held),
                    pct(&new, new.held),
                    secs(&old),
                    secs(&new),
                    reqs(&old),
                    reqs(&new),
                    clock.elapsed().as_secs_f64(),
                );
                if factor == 1.0 && new.share(new.rolled_back) >= 0.01 {
                    failures.push(format!(
                        "false rollback {:.2}% at {:.1}% {rate} req/s",
                        new.share(new.rolled_back) * 100.0,
                        base * 100.0
                    ));
                }
                if factor == 5.0 && new.share(new.promoted) >= 0.01 {
                    failures.push(format!(
                        "false promotion of 5x {:.2}% at {:.1}% {rate} req/s",
                        new.share(new.promoted) * 100.0,
                        base * 100.0
                    ));
                }
            }
        }
    }
    // The blast radius: a canary at 5 % that starts failing 10 % 5 s in, 1,000 req/s, the first
    // step 5 minutes long (as load-tests/rollout-blast.sh runs it).
    let spec = sim::spec(
        "{ strategy: canary, stable: s, canary: c, step_interval: 5m, gates: { min_requests: 100, max_error_rate: 0.01 } }",
    );
    let t = Traffic {
        rate: 1000.0,
        stable_error: 0.0,
        canary_error: 0.1,
        bad_from: Duration::from_secs(5),
        canary_slower: 1.0,
    };
    let (old, new) = sim::run_both(&spec, t, a.rollouts, 99, Duration::from_secs(60), a.threads);
    println!(
        "\nBlast radius: 1,000 req/s, canary at 5 % turns 10 %-failing 5 s into a 5-minute step; from its first failure to weight 0, and its failed requests (median / p90 / max):\n"
    );
    println!("| policy | rolled back | s to weight 0 | failed requests |");
    println!("|---|---|---|---|");
    for (name, t) in [("old", &old), ("new", &new)] {
        let s = |q| {
            t.secs_q(q)
                .map_or("-".into(), |v| format!("{:.1}", v - 5.0))
        };
        let f = |q| t.failures_q(q).map_or("-".into(), |v| format!("{v:.0}"));
        println!(
            "| {name} | {} | {} / {} / {} | {} / {} / {} |",
            pct(t, t.rolled_back),
            s(0.5),
            s(0.9),
            s(1.0),
            f(0.5),
            f(0.9),
            f(1.0)
        );
    }
    println!(
        "\nTargets (new): false rollback < 1% and false promotion of a 5x-worse canary < 1% in every scenario: {}",
        if failures.is_empty() {
            "met".to_owned()
        } else {
            format!("MISSED: {}", failures.join("; "))
        }
    );
    println!("({:.0} s in all)", started.elapsed().as_secs_f64());
}
