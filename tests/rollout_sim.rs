//! The rollout simulator's targets, held in CI: a cheap run (a few hundred seeded rollouts per
//! scenario, so the numbers are the same on every run) of the real engine and policy, with the
//! policy of before issue 15 on the same streams to show each scenario has teeth. The full
//! table is `cargo bench --bench rollout_sim`.
//!
//! Targets: a canary equal to stable is rolled back in under 1 % of rollouts, a canary 5x
//! worse is promoted in under 1 %, and a canary at 5 % that turns 10 %-failing is at weight 0
//! within 2 s (median) with under 50 failed requests.

#[path = "../benches/rollout_sim/sim.rs"]
mod sim;

use std::time::Duration;

use sim::Traffic;

const ROLLOUTS: usize = 400;

fn traffic(rate: f64, stable: f64, canary: f64) -> Traffic {
    Traffic {
        rate,
        stable_error: stable,
        canary_error: canary,
        bad_from: Duration::ZERO,
        canary_slower: 1.0,
    }
}

fn run(rollout: &str, t: Traffic, seed: u64) -> (sim::Tally, sim::Tally) {
    let spec = sim::spec(rollout);
    let horizon = sim::horizon(&spec);
    sim::run_both(&spec, t, ROLLOUTS, seed, horizon, 2)
}

const FIVE_SECOND_STEPS: &str = "{ strategy: canary, stable: s, canary: c, step_interval: 5s }";

#[test]
fn an_equal_canary_is_not_rolled_back_where_the_old_policy_rolled_back_one_in_seven() {
    // The setting: both arms failing 0.5 %, 1,000 req/s, 5 s steps, default gates.
    let (old, new) = run(FIVE_SECOND_STEPS, traffic(1000.0, 0.005, 0.005), 1);
    assert!(
        old.share(old.rolled_back) > 0.05,
        "the scenario is hard: the old policy rolled back {} of {}",
        old.rolled_back,
        old.runs
    );
    assert!(
        new.share(new.rolled_back) < 0.01,
        "{} of {} equal canaries rolled back",
        new.rolled_back,
        new.runs
    );
    assert!(
        new.share(new.promoted) > 0.95,
        "and they are promoted: {new:?}"
    );
}

#[test]
fn a_canary_five_times_worse_is_not_promoted_even_under_the_error_limit() {
    // 0.1 % -> 0.5 %: under max_error_rate (1 %), so only the comparison with stable sees it.
    let (old, new) = run(FIVE_SECOND_STEPS, traffic(1000.0, 0.001, 0.005), 2);
    assert!(
        old.share(old.promoted) > 0.5,
        "the old policy promoted {} of {}",
        old.promoted,
        old.runs
    );
    assert!(
        new.share(new.promoted) < 0.01,
        "{} of {} 5x-worse canaries promoted",
        new.promoted,
        new.runs
    );
    assert!(new.share(new.rolled_back) > 0.9, "{new:?}");
    // At 2 % base (limit 5 %) and a tenth of the traffic, the same.
    let (_, new) = run(
        "{ strategy: canary, stable: s, canary: c, step_interval: 5s, gates: { max_error_rate: 0.05 } }",
        traffic(100.0, 0.02, 0.1),
        3,
    );
    assert!(new.share(new.promoted) < 0.01, "{new:?}");
}

#[test]
fn a_canary_turning_ten_percent_bad_is_stopped_within_two_seconds() {
    let spec = sim::spec(
        "{ strategy: canary, stable: s, canary: c, step_interval: 5m, gates: { min_requests: 100, max_error_rate: 0.01 } }",
    );
    let t = Traffic {
        bad_from: Duration::from_secs(5),
        ..traffic(1000.0, 0.0, 0.1)
    };
    let (_, new) = sim::run_both(&spec, t, ROLLOUTS, 4, Duration::from_secs(30), 2);
    assert_eq!(new.rolled_back, new.runs, "{new:?}");
    let median = new.secs_q(0.5).unwrap() - 5.0;
    assert!(median < 2.0, "median {median:.1}s from the first failure");
    let worst = new.failures_q(1.0).unwrap();
    assert!(worst < 50.0, "{worst} failed requests at worst");
}
