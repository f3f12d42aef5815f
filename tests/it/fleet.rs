//! A fleet through a real etcd: real switchyard processes on loopback sharing one rollout.
//! Every wait polls a replica's admin API with a bounded deadline; leases are 2 s so that
//! failovers happen within a test's patience.

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::rollout::{config, load, weights};
use crate::support::bin::Process;
use crate::support::etcd::Etcd;
use crate::support::proxy::{TempDir, sample};
use crate::support::*;

/// A rollout of `stable` to `canary` on route `r` (a YAML flow mapping's inside).
fn spec(more: &str) -> String {
    format!("{{ strategy: canary, stable: stable, canary: canary, {more} }}")
}

struct Fleet {
    etcd: Etcd,
    stable: TestBackend,
    canary: TestBackend,
    dir: TempDir,
    replicas: Vec<Option<Process>>,
}

impl Fleet {
    /// etcd, the two backends, and `n` replicas of the rollout `rollout` (started in order, so
    /// the first leads).
    async fn start(n: usize, rollout: &str) -> Fleet {
        let mut f = Fleet {
            etcd: Etcd::start().await,
            stable: TestBackend::start("stable").await,
            canary: TestBackend::start("canary").await,
            dir: TempDir::new(),
            replicas: Vec::new(),
        };
        for i in 0..n {
            f.add(&format!("n{i}"), rollout);
            if i == 0 {
                f.wait(0, "leading", |v| v["fleet"]["leading"] == true)
                    .await;
            }
        }
        f
    }

    fn yaml(&self, node: &str, rollout: &str, extra: &str) -> String {
        let cluster = format!(
            "cluster: {{ name: test, node: {node}, etcd: {{ endpoints: [\"{}\"] }}, lease_ttl: 2s, publish_interval: 100ms }}\n{extra}",
            self.etcd.url()
        );
        config(&self.stable, &self.canary, rollout, &cluster)
    }

    /// Starts replica `node` with `rollout`; its index.
    fn add(&mut self, node: &str, rollout: &str) -> usize {
        self.add_with(node, rollout, "")
    }

    fn add_with(&mut self, node: &str, rollout: &str, extra: &str) -> usize {
        let path = self.dir.0.join(format!("{node}.yaml"));
        std::fs::write(&path, self.yaml(node, rollout, extra)).unwrap();
        self.replicas.push(Some(Process::run(&path, &[])));
        self.replicas.len() - 1
    }

    fn p(&self, i: usize) -> &Process {
        self.replicas[i].as_ref().expect("replica stopped")
    }

    fn admin(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.p(i).admin)
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}/", self.p(i).proxy)
    }

    fn live(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].is_some())
            .collect()
    }

    async fn json(&self, i: usize, path: &str) -> Value {
        let r = get(&client(), &self.admin(i, path)).await;
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    async fn rollout(&self, i: usize) -> Value {
        self.json(i, "/rollouts/r").await
    }

    async fn metrics(&self, i: usize) -> String {
        let r = get(&client(), &self.admin(i, "/metrics")).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// Polls replica `i`'s rollout until `cond` holds (bounded: 60 s).
    async fn wait(&self, i: usize, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..3000 {
            let v = self.rollout(i).await;
            if cond(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "replica {i}: rollout never became {what}: {:#}",
            self.rollout(i).await
        );
    }

    /// Waits until every live replica's rollout satisfies `cond`.
    async fn wait_all(&self, what: &str, cond: impl Fn(&Value) -> bool + Copy) {
        for i in self.live() {
            self.wait(i, what, cond).await;
        }
    }

    /// The replica that leads (bounded: 60 s).
    async fn leader(&self) -> usize {
        self.leader_among(&self.live()).await
    }

    /// The one of `among` that leads (bounded: 60 s).
    async fn leader_among(&self, among: &[usize]) -> usize {
        for _ in 0..3000 {
            for &i in among {
                if self.rollout(i).await["fleet"]["leading"] == true {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no replica leads");
    }

    async fn post(&self, i: usize, path: &str) -> (u16, Value) {
        let req = Request::post(self.admin(i, path))
            .body(Full::default())
            .unwrap();
        let r = send(&client(), req).await;
        (
            r.status.as_u16(),
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// The fleet's state for `r` as etcd holds it.
    async fn stored(&self) -> Value {
        self.etcd
            .get("/switchyard/test/control/rollouts/r")
            .await
            .unwrap_or(Value::Null)
    }

    /// Sends `n` requests to replica `i`, one after another; their (status, backend).
    async fn send_n(&self, i: usize, n: usize, user: Option<&str>) -> Vec<(u16, String)> {
        let c = client();
        let url = self.url(i);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let r = match user {
                Some(u) => get_with(&c, &url, &[("x-user-id", u)]).await,
                None => get(&c, &url).await,
            };
            out.push((r.status.as_u16(), r.backend().to_owned()));
        }
        out
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn step_of(v: &Value) -> (String, Option<u64>) {
    (
        v["state"].as_str().unwrap_or("").to_owned(),
        v["step"].as_u64(),
    )
}

/// The steps a rollout's history went through.
fn steps_in(v: &Value) -> Vec<u64> {
    v["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["to"]["step"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_with_a_failing_canary_all_take_it_to_0_and_none_advances() {
    let f = Fleet::start(
        3,
        &spec("steps: [10, 50, 100], step_interval: 1s, gates: { min_requests: 40, max_p99_ms: 5000, abort_min_requests: 40 }"),
    )
    .await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    f.canary.set_failing(30);
    let loads: Vec<_> = f.live().iter().map(|&i| load(f.url(i), 2, &[])).collect();
    f.wait_all("rolled back", |v| v["state"] == "rolled-back")
        .await;
    for l in loads {
        l.finish().await;
    }
    for i in f.live() {
        let v = f.rollout(i).await;
        assert_eq!(weights(&v), [100, 0], "replica {i}: {v:#}");
        assert_eq!(
            steps_in(&v),
            [0],
            "replica {i} advanced: {:#}",
            v["history"]
        );
        let split = &f.json(i, "/status").await["routes"][0]["split"];
        assert_eq!(split[1]["weight"], 0, "replica {i}: {split}");
    }
    let stored = f.stored().await;
    assert_eq!(stored["state"]["state"], "rolled-back", "{stored:#}");
    assert_eq!(stored["canary_weight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_count_every_replicas_requests() {
    // min_requests 500 while each replica sees about 200 canary requests: only the sum of three
    // passes. About 600 clean canary requests also show every gate passed at 95 % (the
    // error_ratio floor's test, the slowest, needs about 470 at a floor of 1 %).
    let f = Fleet::start(
        3,
        &spec("steps: [50, 100], step_interval: 500ms, gates: { min_requests: 500, max_p99_ms: 5000, abort_min_requests: 500, error_ratio_floor: 0.01 }"),
    )
    .await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    for i in 0..2 {
        f.send_n(i, 400, None).await;
    }
    let held = f.rollout(0).await;
    assert_eq!(step_of(&held), ("progressing".into(), Some(0)), "{held:#}");
    // Watched while the third replica's requests go out: the promotion comes part way
    // through them, and the holds of step 1 (one a second) push its decision out of the last
    // ten well before 400 requests end on a loaded machine.
    let (_, v) = tokio::join!(
        f.send_n(2, 400, None),
        f.wait(0, "at step 1", |v| v["step"] == 1)
    );
    let promote = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"]["step"] == 1)
        .cloned()
        .unwrap();
    assert!(
        promote["reason"].as_str().unwrap().contains("gates passed"),
        "{promote}"
    );
    let decision = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|d| d["verdict"] == "promote")
        .cloned()
        .unwrap_or_else(|| panic!("no promote decision: {v:#}"));
    let fleet_canary = decision["inputs"]["canary"]["requests"].as_u64().unwrap();
    assert!(fleet_canary >= 500, "{decision:#}");
    // Each replica alone saw far fewer canary requests than the gate needs.
    for i in f.live() {
        let split = &f.json(i, "/status").await["routes"][0]["split"];
        let own: u64 = split[1]["responses"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .sum();
        assert!(
            own > 100 && own < 350,
            "replica {i} saw {own} canary requests"
        );
    }
    f.wait_all("at step 1", |v| v["step"] == 1 && weights(v) == [0, 100])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_hands_over_and_the_rollout_continues_at_its_step() {
    let mut f = Fleet::start(
        3,
        &spec("steps: [10, 40, 100], step_interval: 1s, gates: { min_requests: 30, max_p99_ms: 5000, abort_min_requests: 30 }"),
    )
    .await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    let old = f.leader().await;
    // Step 1 by hand, then no traffic: the rollout waits at step 1 for requests.
    let (code, v) = f.post((old + 1) % 3, "/rollouts/r/promote").await;
    assert_eq!((code, v["step"].as_u64()), (200, Some(1)), "{v:#}");
    f.wait_all("at step 1", |v| v["step"] == 1).await;
    let mut p = f.replicas[old].take().unwrap();
    p.signal("KILL");
    p.wait_exit();
    let new = f.leader().await;
    assert_ne!(new, old);
    let v = f.rollout(new).await;
    assert_eq!(
        step_of(&v),
        ("progressing".into(), Some(1)),
        "not started over: {v:#}"
    );
    // Traffic again: the new leader decides on the fleet's numbers, one step up.
    let loads: Vec<_> = f.live().iter().map(|&i| load(f.url(i), 2, &[])).collect();
    let v = f.wait(new, "at step 2", |v| v["step"] == 2).await;
    for l in loads {
        l.finish().await;
    }
    assert_eq!(
        steps_in(&v),
        [0, 1, 2],
        "no step skipped or repeated: {:#}",
        v["history"]
    );
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    let new_node = format!("n{new}/");
    assert!(
        last["writer"].as_str().unwrap().starts_with(&new_node),
        "{last}"
    );
    assert_eq!(f.stored().await["state"]["step"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_cannot_write_once_resumed() {
    // Only the leader (n0) gets traffic: its own counts make the step due, the others' do not.
    // At 50 % confidence and these lines, about 180 clean canary requests show every gate
    // passed (the p99 ceiling's test, against 1 % slower, needs the most). The step lasts
    // 30 s: its 600 requests and their count must land before it is due, which took more
    // than 12 s on a loaded machine.
    let f = Fleet::start(
        3,
        &spec("steps: [50, 100], step_interval: 30s, gates: { min_requests: 40, max_p99_ms: 5000, abort_min_requests: 1000, confidence: 0.5, max_error_rate: 0.05, error_ratio_floor: 0.05 }"),
    )
    .await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    let v = f.rollout(0).await;
    let started_ms = v["fleet"]["updated_ms"].as_u64().unwrap();
    let epoch = v["fleet"]["epoch"].clone();
    assert_eq!(f.leader().await, 0);
    // From 8 clients: one at a time, each request waits out the scheduling delays of three
    // processes in turn, and 600 of them took more than 27 s at load 15.
    futures_util::future::join_all((0..8).map(|_| f.send_n(0, 75, None))).await;
    // The leader has its own report back through etcd before it stops.
    f.wait(0, "counted", |v| {
        v["fleet"]["counted"]["canary"]["requests"].as_u64() >= Some(240)
    })
    .await;
    assert!(
        now_ms() < started_ms + 27_000,
        "too slow to stop the leader before its step is due"
    );
    f.p(0).signal("STOP");
    let new = f.leader_among(&[1, 2]).await;
    // Resume once the step is due by the wall clock: the stale leader's engine now promotes.
    while now_ms() < started_ms + 30_500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.p(0).signal("CONT");
    f.p(0).wait_log("was not written");
    // Its decision never landed. The new leader may have promoted on its own: a departed
    // replica's counts stay in the sum, and the stopped one's report can outlive its leadership
    // on a loaded machine. Whatever is stored after the start was not written by n0.
    let stored = f.stored().await;
    let by_stale: Vec<_> = stored["history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .filter(|e| e["writer"].as_str().is_some_and(|w| w.starts_with("n0/")))
        .collect();
    assert!(by_stale.is_empty(), "{stored:#}");
    if stored["state"]["step"] == 0 {
        assert_eq!(stored["epoch"], epoch, "{stored:#}");
    } else {
        assert_eq!(stored["by"], format!("n{new}").as_str(), "{stored:#}");
    }
    let m = f.metrics(0).await;
    assert!(
        sample(
            &m,
            "switchyard_fleet_writes_total{kind=\"decision\",result=\"refused\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_fleet_writes_total{kind=\"decision\",result=\"written\"}"
        ),
        None
    );
    // It follows now.
    let leader = format!("n{new}");
    f.wait(0, "a follower", |v| {
        v["fleet"]["leading"] == false && v["fleet"]["leader"] == leader.as_str()
    })
    .await;
}

/// No response, or an error switchyard made (not the canary's own 500s).
fn failed(seen: &[(u16, String)]) -> Vec<&(u16, String)> {
    seen.iter()
        .filter(|(s, backend)| *s != 200 && !(*s == 500 && backend == "canary"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_away_fails_no_request_holds_the_steps_and_a_failing_canary_still_goes_to_0() {
    let mut f = Fleet::start(
        3,
        &spec("steps: [20, 50, 100], step_interval: 1500ms, gates: { min_requests: 20, max_p99_ms: 5000, abort_min_requests: 20 }"),
    )
    .await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    // Step 1 by hand: showing a clean canary not worse at 95 % takes about 500 of its requests,
    // which a loaded machine took minutes to send, and nothing here is about that step.
    let (code, v) = f.post(1, "/rollouts/r/promote").await;
    assert_eq!((code, v["step"].as_u64()), (200, Some(1)), "{v:#}");
    let loads: Vec<_> = f.live().iter().map(|&i| load(f.url(i), 2, &[])).collect();
    f.wait(0, "at step 1", |v| v["step"] == 1).await;
    f.etcd.stop();
    f.wait_all("cut off", |v| v["fleet"]["etcd_up"] == false)
        .await;
    let cut = tokio::time::Instant::now();
    // Twice the step interval without etcd: the steps would have moved, and must not.
    while cut.elapsed() < Duration::from_secs(3) {
        for i in f.live() {
            let v = f.rollout(i).await;
            assert_eq!(v["step"], 1, "replica {i} moved without etcd: {v:#}");
            let ready = get(&client(), &f.admin(i, "/readyz")).await;
            assert_eq!(ready.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.canary.set_failing(50);
    // Each replica's own abort rule takes the canary out, etcd or not.
    f.wait_all("aborted here", |v| {
        weights(v) == [100, 0] && v["fleet"]["abort_pending"].is_string()
    })
    .await;
    let at_zero = f.canary.traffic();
    f.send_n(0, 20, None).await;
    assert_eq!(
        f.canary.traffic(),
        at_zero,
        "the canary got traffic after the abort"
    );
    f.etcd.restart().await;
    f.wait_all("converged", |v| {
        v["state"] == "rolled-back"
            && v["fleet"]["etcd_up"] == true
            && v["fleet"]["abort_pending"].is_null()
    })
    .await;
    let seen: Vec<(u16, String)> = {
        let mut all = Vec::new();
        for l in loads {
            all.extend(l.finish().await);
        }
        all
    };
    assert!(seen.len() > 300, "too little traffic: {}", seen.len());
    assert!(
        failed(&seen).is_empty(),
        "failed requests: {:?}",
        failed(&seen)
    );
    let stored = f.stored().await;
    assert_eq!(stored["state"]["state"], "rolled-back", "{stored:#}");
    let epochs: Vec<Value> = {
        let mut e = Vec::new();
        for i in f.live() {
            e.push(f.rollout(i).await["fleet"]["epoch"].clone());
        }
        e
    };
    assert!(
        epochs.iter().all(|e| *e == stored["epoch"]),
        "{epochs:?} vs {stored:#}"
    );
    assert_eq!(steps_in(&stored), [0, 1], "{:#}", stored["history"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_joins_routes_with_the_fleets_weights_from_its_first_request() {
    let rollout = spec("steps: [10, 30, 60, 100], step_interval: 1h");
    let mut f = Fleet::start(2, &rollout).await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    f.post(1, "/rollouts/r/promote").await;
    f.post(1, "/rollouts/r/promote").await;
    f.wait_all("at step 2", |v| v["step"] == 2 && weights(v) == [40, 60])
        .await;

    let j = f.add("late", &rollout);
    // The first snapshot already has the fleet's weights, before any request.
    let split = f.json(j, "/status").await["routes"][0]["split"].clone();
    assert_eq!(
        (split[0]["weight"].as_u64(), split[1]["weight"].as_u64()),
        (Some(40), Some(60)),
        "{split}"
    );
    let c = client();
    for u in 0..100 {
        let user = format!("user-{u}");
        let here = get_with(&c, &f.url(j), &[("x-user-id", &user)]).await;
        let there = get_with(&c, &f.url(0), &[("x-user-id", &user)]).await;
        assert_eq!(here.backend(), there.backend(), "{user}");
    }

    let (code, _) = f.post(0, "/rollouts/r/abort").await;
    assert_eq!(code, 200);
    f.wait_all("aborted", |v| v["state"] == "aborted").await;
    let after = f.add("after-rollback", &rollout);
    let split = f.json(after, "/status").await["routes"][0]["split"].clone();
    assert_eq!(split[1]["weight"].as_u64(), Some(0), "{split}");
    let before = f.canary.traffic();
    let seen = f.send_n(after, 50, None).await;
    assert!(
        seen.iter().all(|(s, b)| *s == 200 && b == "stable"),
        "{seen:?}"
    );
    assert_eq!(
        f.canary.traffic(),
        before,
        "the rolled-back canary got traffic"
    );
    let v = f.rollout(after).await;
    assert_eq!(v["state"], "aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_joins_after_a_promotion_stays_promoted() {
    let rollout = spec("steps: [50, 100], step_interval: 1h");
    let mut f = Fleet::start(1, &rollout).await;
    f.wait(0, "started", |v| v["state"] == "progressing").await;
    f.post(0, "/rollouts/r/promote").await;
    f.post(0, "/rollouts/r/promote").await;
    f.wait(0, "promoted", |v| v["state"] == "promoted").await;
    let j = f.add("late", &rollout);
    let split = f.json(j, "/status").await["routes"][0]["split"].clone();
    assert_eq!(
        (split[0]["weight"].as_u64(), split[1]["weight"].as_u64()),
        (Some(0), Some(100)),
        "{split}"
    );
    let seen = f.send_n(j, 20, None).await;
    assert!(seen.iter().all(|(_, b)| b == "canary"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_aborts_on_one_replica_and_every_replica_stops() {
    let f = Fleet::start(3, &spec("steps: [20, 50, 100], step_interval: 1h")).await;
    f.wait_all("started", |v| {
        v["state"] == "progressing" && weights(v) == [80, 20]
    })
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["abort", "r", "--admin"])
        .arg(f.p(1).admin.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    f.wait_all("aborted", |v| {
        v["state"] == "aborted" && weights(v) == [100, 0]
    })
    .await;
    let before = f.canary.traffic();
    for i in [0, 2] {
        let seen = f.send_n(i, 30, None).await;
        assert!(
            seen.iter().all(|(s, b)| *s == 200 && b == "stable"),
            "replica {i}: {seen:?}"
        );
    }
    assert_eq!(f.canary.traffic(), before);
    let stored = f.stored().await;
    let last = stored["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["reason"], "operator: abort");
    assert!(
        last["writer"].as_str().unwrap().starts_with("n1/"),
        "{last}"
    );
    assert_eq!(stored["by"], "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_gets_the_same_version_from_every_replica_at_every_step() {
    let f = Fleet::start(3, &spec("steps: [10, 30, 60, 100], step_interval: 1h")).await;
    let c = client();
    for (step, w) in [10u64, 30, 60, 100].into_iter().enumerate() {
        if step > 0 {
            let (code, v) = f.post(step % 3, "/rollouts/r/promote").await;
            assert_eq!(code, 200, "{v:#}");
        }
        f.wait_all("at the step", |v| weights(v) == [100 - w, w])
            .await;
        let mut on_canary = 0;
        for u in 0..120 {
            let user = format!("user-{u}");
            let mut seen = Vec::new();
            for i in f.live() {
                seen.push(
                    get_with(&c, &f.url(i), &[("x-user-id", &user)])
                        .await
                        .backend()
                        .to_owned(),
                );
            }
            assert!(
                seen.iter().all(|b| *b == seen[0]),
                "{user} at {w}%: {seen:?}"
            );
            on_canary += usize::from(seen[0] == "canary");
        }
        let share = on_canary as f64 / 120.0;
        assert!((share - w as f64 / 100.0).abs() < 0.15, "{share} at {w}%");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_spec_follows_the_fleet_says_so_and_a_spec_everyone_has_wins() {
    let x = spec("steps: [20, 50, 100], step_interval: 1h");
    let y = spec("steps: [10, 100], step_interval: 1h");
    let mut f = Fleet::start(2, &x).await;
    f.wait_all("started", |v| v["state"] == "progressing").await;
    f.post(1, "/rollouts/r/promote").await;
    f.wait_all("at step 1", |v| v["step"] == 1).await;

    // Its ConfigMap is ahead (or behind): it follows the fleet's weights and says so.
    let j = f.add("odd", &y);
    let v = f.rollout(j).await;
    assert_eq!(v["fleet"]["spec_mismatch"], true, "{v:#}");
    assert_eq!(
        (v["step"].as_u64(), weights(&v)),
        (Some(1), vec![50, 50]),
        "{v:#}"
    );
    let status = f.json(j, "/status").await;
    assert_eq!(
        status["fleet"]["routes"]["r"]["spec_mismatch"], true,
        "{:#}",
        status["fleet"]
    );
    let m = f.metrics(j).await;
    assert_eq!(
        sample(&m, "switchyard_fleet_spec_mismatch{route=\"r\"}"),
        Some(1.0)
    );
    assert_eq!(
        f.post(j, "/rollouts/r/promote").await.0,
        409,
        "a mismatched replica does not command"
    );
    // The leader holds while replicas disagree.
    f.wait(0, "holding", |v| {
        v["fleet"]["holding"]
            .as_str()
            .is_some_and(|h| h.contains("odd"))
    })
    .await;

    // Its config catches up.
    let path = f.dir.0.join("odd.yaml");
    crate::support::proxy::write_atomic(&path, &f.yaml("odd", &x, ""));
    f.wait(j, "matching", |v| v["fleet"]["spec_mismatch"] == false)
        .await;
    assert_eq!(
        sample(
            &f.metrics(j).await,
            "switchyard_fleet_spec_mismatch{route=\"r\"}"
        ),
        Some(0.0)
    );
    f.wait(0, "not holding", |v| v["fleet"]["holding"].is_null())
        .await;

    // Everyone moves to y: a new rollout of y replaces x's.
    for (i, node) in [(0, "n0"), (1, "n1"), (j, "odd")] {
        let path = f.dir.0.join(format!("{node}.yaml"));
        crate::support::proxy::write_atomic(&path, &f.yaml(node, &y, ""));
        let _ = i;
    }
    f.wait_all("y at step 0", |v| {
        v["step"] == 0 && weights(v) == [90, 10] && v["fleet"]["spec_mismatch"] == false
    })
    .await;
    let v = f.rollout(1).await;
    let reason = v["history"].as_array().unwrap().last().unwrap()["reason"].clone();
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("spec changed on every replica"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cluster_nothing_of_the_fleet_shows_and_state_dir_is_as_before() {
    let (stable, canary) = crate::rollout::backends().await;
    let state_dir = TempDir::new();
    let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
    let p = Proxy::start(&config(
        &stable,
        &canary,
        &spec("steps: [5, 100], step_interval: 1h"),
        &extra,
    ))
    .await;
    let v = crate::rollout::wait_rollout(&p, "started", |v| v["state"] == "progressing").await;
    assert!(v.get("fleet").is_none(), "{v:#}");
    assert!(p.status().await.get("fleet").is_none());
    assert!(!p.metrics().await.contains("switchyard_fleet_"));
    p.shutdown().await;
    let mut files: Vec<String> = std::fs::read_dir(&state_dir.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["rollouts.jsonl", "rollouts.lock", "rollouts.state.json"]
    );
}

/// A replica on its own (not part of a [`Fleet`]), its config in `dir`: `etcd` is the inside
/// of its `cluster.etcd` flow mapping.
fn lone(dir: &TempDir, node: &str, b: &(TestBackend, TestBackend), etcd: &str) -> Process {
    let cluster = format!(
        "cluster: {{ name: test, node: {node}, etcd: {{ {etcd} }}, lease_ttl: 2s, publish_interval: 100ms }}\n"
    );
    let path = dir.0.join(format!("{node}.yaml"));
    let rollout = spec("steps: [20, 100], step_interval: 1h");
    std::fs::write(&path, config(&b.0, &b.1, &rollout, &cluster)).unwrap();
    Process::run(&path, &[])
}

async fn view_of(p: &Process) -> Value {
    let r = get(&client(), &format!("http://{}/rollouts/r", p.admin)).await;
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// Polls a lone replica's rollout until it leads with the first step's weights (60 s).
async fn wait_leading(p: &Process) {
    for _ in 0..3000 {
        let v = view_of(p).await;
        if v["state"] == "progressing" && weights(&v) == [80, 20] && v["fleet"]["leading"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never joined: {:#}", view_of(p).await);
}

/// A replica that could not join: it said so at start, serves, and sends no canary traffic.
async fn cut_off(p: &Process, why: &str) {
    let said = p
        .startup
        .iter()
        .find(|l| l.contains("cannot join the fleet"));
    assert!(
        said.is_some_and(|l| l.contains(why)),
        "{why}: {:#?}",
        p.startup
    );
    let v = view_of(p).await;
    assert_eq!(v["fleet"]["etcd_up"], false, "{v:#}");
    assert_eq!(weights(&v), [100, 0], "no canary until the fleet says so");
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{}/readyz", p.admin)).await.status,
        200
    );
    for _ in 0..20 {
        assert_eq!(
            get(&c, &format!("http://{}/", p.proxy)).await.backend(),
            "stable"
        );
    }
    let m = get(&c, &format!("http://{}/metrics", p.admin)).await;
    assert_eq!(
        sample(
            std::str::from_utf8(&m.body).unwrap(),
            "switchyard_fleet_etcd_up"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_reach_etcd_at_start_serves_without_a_canary_and_joins_later() {
    let b = crate::rollout::backends().await;
    let addr = crate::support::etcd::free_port();
    let dir = TempDir::new();
    let p = lone(
        &dir,
        "alone",
        &b,
        &format!("endpoints: [\"http://{addr}\"]"),
    );
    cut_off(&p, &addr.to_string()).await;
    assert_eq!(view_of(&p).await["fleet"]["waiting"], true);
    // etcd comes up where it was expected: the replica joins, leads and starts the rollout.
    let _etcd = Etcd::start_on(addr, Vec::new(), "http").await;
    wait_leading(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_a_username_and_password() {
    let etcd = Etcd::start().await;
    for (path, body) in [
        ("/v3/auth/role/add", serde_json::json!({"name": "root"})),
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": "s3cret pw"}),
        ),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        assert!(etcd.call(path, body).await.is_some(), "{path}");
    }
    let b = crate::rollout::backends().await;
    let dir = TempDir::new();
    let auth = |file: &str, password: &str| {
        let path = dir.0.join(file);
        std::fs::write(&path, password).unwrap();
        format!(
            "endpoints: [\"{}\"], username: root, password_file: \"{}\"",
            etcd.url(),
            path.display()
        )
    };
    let good = lone(&dir, "good", &b, &auth("pw", "s3cret pw\n"));
    wait_leading(&good).await;
    // A wrong password: a clear error, no crash, traffic served, no canary.
    let bad = lone(&dir, "bad", &b, &auth("wrong", "nope\n"));
    cut_off(&bad, "authenticat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    use crate::support::tls::{Ca, p};
    let ca = Ca::new();
    let dir = TempDir::new();
    let ca_path = dir.0.join("ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (server_cert, server_key) = ca
        .server_and_client(&["127.0.0.1", "localhost"])
        .write(&dir.0, "etcd");
    let (client_cert, client_key) = ca.client("switchyard").write(&dir.0, "client");
    let flags = vec![
        format!("--cert-file={}", p(&server_cert)),
        format!("--key-file={}", p(&server_key)),
        format!("--trusted-ca-file={}", p(&ca_path)),
        "--client-cert-auth".to_owned(),
    ];
    let etcd = Etcd::start_with(flags, "https").await;
    let b = crate::rollout::backends().await;
    let tls = |cert: &str| {
        format!(
            "endpoints: [\"{}\"], tls: {{ ca_file: \"{}\"{cert} }}",
            etcd.url(),
            p(&ca_path)
        )
    };
    let with_cert = format!(
        ", client_cert: \"{}\", client_key: \"{}\"",
        p(&client_cert),
        p(&client_key)
    );
    let good = lone(&dir, "good", &b, &tls(&with_cert));
    wait_leading(&good).await;
    // Without a client certificate etcd refuses it: said clearly, served without a canary.
    let bad = lone(&dir, "bad", &b, &tls(""));
    cut_off(&bad, "BadCertificate").await;
}
