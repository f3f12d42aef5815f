//! Rollout state in `state_dir` that cannot be trusted fails closed: an unreadable state file
//! is kept aside and every rollout waits at stable 100 % for an operator; a `state_dir` that
//! cannot be written says so; one process at a time holds a `state_dir`.

use std::os::unix::fs::FileTypeExt;

use serde_json::Value;

use crate::rollout::{
    all_to_stable, backends, config, post, rollout, state, wait_rollout, weights,
};
use crate::support::bin::{Process, give_to_nobody};
use crate::support::proxy::TempDir;
use crate::support::*;

const SPEC: &str = "{ strategy: canary, stable: stable, canary: canary, steps: [5, 20, 50, 100], step_interval: 1h }";

fn journal(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Files of `dir` whose name starts with `prefix`.
fn files_starting(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_state_file_is_kept_aside_and_the_rollout_waits_at_stable() {
    let (stable, canary) = backends().await;
    let truncated = |good: &[u8]| good[..good.len() / 2].to_vec();
    let garbage = |_: &[u8]| b"\x00\x01 not json {{".to_vec();
    for (what, spoil) in [
        ("truncated", &truncated as &dyn Fn(&[u8]) -> Vec<u8>),
        ("garbage", &garbage),
    ] {
        let state_dir = TempDir::new();
        let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
        let yaml = config(&stable, &canary, SPEC, &extra);
        let first = Proxy::start(&yaml).await;
        wait_rollout(&first, "started", |v| v["state"] == "progressing").await;
        post(&first, "/rollouts/r/promote").await;
        let (code, v) = post(&first, "/rollouts/r/abort").await;
        assert_eq!((code, state(&v)), (200, ("aborted", None)));
        assert!(first.shutdown().await);

        let file = state_dir.0.join("rollouts.state.json");
        let bad = spoil(&std::fs::read(&file).unwrap());
        std::fs::write(&file, &bad).unwrap();

        let second = Proxy::start(&yaml).await;
        let (_, v) = rollout(&second, "r").await;
        assert_eq!(state(&v), ("held", None), "{what}: {v:#}");
        assert_eq!(weights(&v), [100, 0], "{what}");
        assert_eq!(v["canary_weight"], 0);
        // The first snapshot already routes by it: no request reaches the aborted canary.
        let split = &second.status().await["routes"][0]["split"];
        assert_eq!(split[1]["weight"].as_u64(), Some(0), "{what}: {split}");
        all_to_stable(&second, &stable, &canary).await;

        let aside = files_starting(&state_dir.0, "rollouts.state.json.untrusted");
        assert_eq!(aside.len(), 1, "{what}: kept aside once: {aside:?}");
        assert_eq!(
            std::fs::read(&aside[0]).unwrap(),
            bad,
            "{what}: kept as it was"
        );
        let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(saved["r"]["state"]["state"], "held", "{what}: {saved:#}");

        let lines = journal(&state_dir.0);
        let last = lines.last().unwrap();
        assert_eq!(last["to"]["state"], "held", "{what}: {last}");
        let reason = last["reason"].as_str().unwrap();
        let aside_name = aside[0].file_name().unwrap().to_str().unwrap();
        assert!(
            reason.contains("could not be read") && reason.contains(aside_name),
            "{what}: {reason}"
        );
        assert_eq!(last["weights"], serde_json::json!([100, 0]));

        // Held waits for an operator: pause and promote are refused, resume starts at step 0.
        assert_eq!(post(&second, "/rollouts/r/pause").await.0, 409);
        assert_eq!(post(&second, "/rollouts/r/promote").await.0, 409);
        let (code, v) = post(&second, "/rollouts/r/resume").await;
        assert_eq!(
            (code, state(&v), weights(&v)),
            (200, ("progressing", Some(0)), vec![95, 5])
        );
        second.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_rollout_stays_held_across_restarts_until_aborted() {
    let (stable, canary) = backends().await;
    let state_dir = TempDir::new();
    let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
    let yaml = config(&stable, &canary, SPEC, &extra);
    std::fs::write(state_dir.0.join("rollouts.state.json"), "{").unwrap();
    let first = Proxy::start(&yaml).await;
    assert_eq!(state(&rollout(&first, "r").await.1), ("held", None));
    assert!(first.shutdown().await);

    let second = Proxy::start(&yaml).await;
    assert_eq!(state(&rollout(&second, "r").await.1), ("held", None));
    assert_eq!(
        files_starting(&state_dir.0, "rollouts.state.json.untrusted").len(),
        1,
        "a good state file is not kept aside"
    );
    let (code, v) = post(&second, "/rollouts/r/abort").await;
    assert_eq!((code, state(&v)), (200, ("aborted", None)));
    let m = second.metrics().await;
    assert_eq!(
        crate::support::proxy::sample(&m, "switchyard_rollout_step{route=\"r\"}"),
        Some(-1.0)
    );
    second.shutdown().await;
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn json(url: String) -> Value {
    serde_json::from_slice(&get(&client(), &url).await.body).unwrap()
}

/// (`persistent` of `GET /rollouts/r`, `state_dir` of `/status`, the metric) of a process.
async fn persistence(p: &Process) -> (Value, Value, Option<f64>) {
    let r = json(format!("http://{}/rollouts/r", p.admin)).await;
    let s = json(format!("http://{}/status", p.admin)).await;
    let m = get(&client(), &format!("http://{}/metrics", p.admin)).await;
    let m = String::from_utf8(m.body.to_vec()).unwrap();
    (
        r["persistent"].clone(),
        s["state_dir"].clone(),
        crate::support::proxy::sample(&m, "switchyard_state_dir_persistent"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_cannot_be_written_says_so_and_its_old_state_is_not_trusted() {
    let (stable, canary) = backends().await;
    let state_dir = TempDir::new();
    let conf_dir = TempDir::new();
    let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
    let yaml = config(&stable, &canary, SPEC, &extra);
    let path = conf_dir.0.join("switchyard.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let first = Proxy::start(&yaml).await;
    wait_rollout(&first, "started", |v| v["state"] == "progressing").await;
    post(&first, "/rollouts/r/promote").await;
    post(&first, "/rollouts/r/promote").await;
    assert!(first.shutdown().await);
    let file = state_dir.0.join("rollouts.state.json");
    let saved = std::fs::read(&file).unwrap();
    chmod(&file, 0o444);
    chmod(&state_dir.0, 0o555);

    let p = Process::run_unprivileged(&path, &["--no-watch"]);
    let v = json(format!("http://{}/rollouts/r", p.admin)).await;
    // What the file says (step 2) may be older than the last transitions: held at stable.
    assert_eq!(state(&v), ("held", None), "{v:#}");
    assert_eq!(weights(&v), [100, 0]);
    let (persistent, dir, metric) = persistence(&p).await;
    assert_eq!(persistent, false);
    assert_eq!(dir["persistent"], false, "{dir:#}");
    assert_eq!(dir["path"], state_dir.0.display().to_string());
    assert!(
        dir["reason"].as_str().unwrap_or("").contains("cannot"),
        "{dir:#}"
    );
    assert_eq!(metric, Some(0.0));
    let r = get(&client(), &format!("http://{}/", p.proxy)).await;
    assert_eq!(r.backend(), "stable");
    assert_eq!(std::fs::read(&file).unwrap(), saved, "left as it was");
    drop(p);
    chmod(&state_dir.0, 0o755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_stops_being_writable_says_so_until_it_is_again() {
    let (stable, canary) = backends().await;
    let state_dir = TempDir::new();
    let conf_dir = TempDir::new();
    give_to_nobody(&state_dir.0);
    let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
    let path = conf_dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&stable, &canary, SPEC, &extra)).unwrap();
    let p = Process::run_unprivileged(&path, &["--no-watch"]);
    let admin = |path: &str| format!("http://{}{path}", p.admin);
    let (persistent, dir, metric) = persistence(&p).await;
    assert_eq!(
        (persistent, &dir["persistent"], metric),
        (Value::Bool(true), &Value::Bool(true), Some(1.0)),
        "{dir:#}"
    );

    chmod(&state_dir.0, 0o555);
    let c = client();
    let pause = http::Request::post(admin("/rollouts/r/pause"))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(send(&c, pause).await.status, 200);
    let (persistent, dir, metric) = persistence(&p).await;
    assert_eq!(persistent, false, "{dir:#}");
    assert_eq!(dir["persistent"], false);
    assert_eq!(metric, Some(0.0));
    p.wait_log("cannot write the rollout state file");

    chmod(&state_dir.0, 0o755);
    let resume = http::Request::post(admin("/rollouts/r/resume"))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(send(&c, resume).await.status, 200);
    let (persistent, dir, metric) = persistence(&p).await;
    assert_eq!(
        (persistent, &dir["persistent"], metric),
        (Value::Bool(true), &Value::Bool(true), Some(1.0)),
        "{dir:#}"
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state_dir.0.join("rollouts.state.json")).unwrap())
            .unwrap();
    assert_eq!(
        saved["r"]["state"]["state"], "progressing",
        "saved again: {saved:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_state_dir_says_who_holds_it_and_exits_1() {
    let (stable, canary) = backends().await;
    let state_dir = TempDir::new();
    let conf_dir = TempDir::new();
    let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
    let yaml = config(&stable, &canary, SPEC, &extra);
    let first = Proxy::start(&yaml).await;
    wait_rollout(&first, "started", |v| v["state"] == "progressing").await;

    let path = conf_dir.0.join("second.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--no-watch", "-c"])
            .kill_on_drop(true)
            .arg(&path)
            .output(),
    )
    .await
    .expect("the second switchyard kept running")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state_dir")
            && stderr.contains("in use by another switchyard")
            && stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );

    // The first one is unharmed and still saves; every journal line says who wrote it.
    let (code, _) = post(&first, "/rollouts/r/promote").await;
    assert_eq!(code, 200);
    first.shutdown().await;
    let lines = journal(&state_dir.0);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let writer = l["writer"].as_str().unwrap_or("");
        assert!(writer.ends_with(&format!("/{}", std::process::id())), "{l}");
    }
    // Once the first has stopped, the state_dir is free again.
    let again = Proxy::start(&yaml).await;
    assert_eq!(
        state(&rollout(&again, "r").await.1),
        ("progressing", Some(1))
    );
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_the_state_file_is_kept_aside_without_wedging_start_up() {
    let (stable, canary) = backends().await;
    let state_dir = TempDir::new();
    let extra = format!("state_dir: \"{}\"\n", state_dir.0.display());
    let yaml = config(&stable, &canary, SPEC, &extra);
    let fifo = state_dir.0.join("rollouts.state.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Started on a task of its own: a start-up that blocks in a read of the FIFO holds its
    // thread, and this one can then say so instead of hanging.
    let starting = tokio::spawn(async move { Proxy::start(&yaml).await });
    let started = tokio::time::timeout(std::time::Duration::from_secs(60), starting).await;
    let Ok(started) = started else {
        // Lets the stuck read see the end of the stream, so the test ends.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
        panic!("start-up did not finish within 60 s with a FIFO as the state file");
    };
    let p = started.unwrap();
    let (_, v) = rollout(&p, "r").await;
    assert_eq!(state(&v), ("held", None), "{v:#}");
    assert!(v["history"].to_string().contains("is a FIFO"), "{v:#}");
    let aside = files_starting(&state_dir.0, "rollouts.state.json.untrusted");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(std::fs::metadata(&aside[0]).unwrap().file_type().is_fifo());
    all_to_stable(&p, &stable, &canary).await;
    p.shutdown().await;
}
