//! The controller with a real reloader and snapshot, statistics written directly and tokio's
//! paused clock: reading the arms, stepping on time, aborting within a tick, weights published.

use std::time::Duration;

use tokio::time::advance;

use super::*;
use crate::reload::{ConfigSource, Reloader};
use crate::rollout::Op;
use crate::server::shutdown::{StopTrigger, stop_pair};
use crate::stats::Outcome;

const CONFIG: &str = "listeners: [{ bind: \"127.0.0.1:0\" }]\nupstreams:\n  a: { backends: [\"127.0.0.1:1\"] }\n  b: { backends: [\"127.0.0.1:2\"] }\nroutes:\n  - name: r\n    split: [{ upstream: a, weight: 100 }, { upstream: b, weight: 0 }]\n    rollout: { strategy: canary, stable: a, canary: b, steps: [10, 50, 100], step_interval: 1s, gates: { min_requests: 10, abort_min_requests: 10 } }\n";

fn start() -> (Controller, RolloutHandle, Arc<Shared>, StopTrigger) {
    let (reloader, reload) = Reloader::load(ConfigSource::Text(CONFIG.into()), 1).unwrap();
    let shared = Arc::clone(reloader.shared());
    let config = Arc::clone(reloader.config());
    let (stop, signal) = stop_pair();
    tokio::spawn(reloader.run(signal));
    let (c, handle) = Controller::new(&config, Arc::clone(&shared), reload).unwrap();
    (c, handle, shared, stop)
}

fn record(shared: &Shared, upstream: &str, n: u64, outcome: Outcome) {
    let snap = shared.snapshot();
    let t = snap
        .route("r")
        .and_then(|r| {
            r.targets
                .iter()
                .find(|t| &*t.upstream.spec.name == upstream)
        })
        .unwrap();
    for _ in 0..n {
        t.stats.answered(
            Some(outcome),
            Some(Duration::from_millis(5)),
            Duration::ZERO,
            Instant::now(),
        );
    }
}

fn weights(shared: &Shared) -> Vec<u32> {
    shared
        .snapshot()
        .route("r")
        .unwrap()
        .split
        .weights()
        .to_vec()
}

#[tokio::test(start_paused = true)]
async fn steps_on_time_then_aborts_within_one_tick() {
    let (mut c, handle, shared, _stop) = start();
    c.tick(Instant::now()).await;
    assert_eq!(weights(&shared), [90, 10], "started at the first step");
    c.tick(Instant::now()).await;
    record(&shared, "b", 20, Outcome::Success);
    record(&shared, "a", 180, Outcome::Success);
    advance(Duration::from_millis(500)).await;
    c.tick(Instant::now()).await;
    assert_eq!(weights(&shared), [90, 10], "half the interval: held");
    advance(Duration::from_millis(600)).await;
    c.tick(Instant::now()).await;
    assert_eq!(
        weights(&shared),
        [50, 50],
        "interval and requests in: next step"
    );
    assert_eq!(handle.get("r").unwrap()["step"], 1);

    c.tick(Instant::now()).await;
    record(&shared, "b", 10, Outcome::ServerError);
    advance(TICK).await;
    c.tick(Instant::now()).await;
    assert_eq!(weights(&shared), [100, 0], "rolled back on the next tick");
    let v = handle.get("r").unwrap();
    assert_eq!(v["state"], "rolled-back");
    assert_eq!(v["last_decision"]["abort"], true);
    assert_eq!(handle.steps(), [("r".to_owned(), -1.0)]);
}

#[tokio::test(start_paused = true)]
async fn operator_commands_go_through_the_task_and_publish_weights() {
    let (c, handle, shared, stop) = start();
    let (stop_c, signal) = stop_pair();
    let task = tokio::spawn(c.run(signal));
    let v = handle.command("r", Op::Promote).await.unwrap();
    assert_eq!(v["step"], 1);
    assert_eq!(weights(&shared), [50, 50]);
    assert_eq!(handle.command("r", Op::Resume).await.unwrap_err().0, 409);
    assert_eq!(handle.command("x", Op::Abort).await.unwrap_err().0, 404);
    handle.command("r", Op::Abort).await.unwrap();
    assert_eq!(weights(&shared), [100, 0]);
    stop_c.fire();
    task.await.unwrap();
    drop(stop);
}
