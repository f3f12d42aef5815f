//! `admin.token_file`: mutating admin calls need the bearer token; reads stay open unless
//! `protect_reads`; a rotated token takes over on reload; the CLI sends it.

use std::net::SocketAddr;
use std::process::Command;

use http::Request;

use crate::support::proxy::TempDir;
use crate::support::*;

fn config(backend: &TestBackend, token: &std::path::Path, protect_reads: bool) -> String {
    format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:0\" }}]\n\
         admin: {{ bind: \"127.0.0.1:0\", token_file: \"{}\", protect_reads: {protect_reads} }}\n\
         upstreams:\n  a: {{ backends: {} }}\n\
         routes:\n  - {{ name: r, split: [{{ upstream: a, weight: 1 }}] }}\n",
        token.display(),
        addrs(&[backend])
    )
}

async fn call(proxy: &Proxy, method: &str, path: &str, auth: Option<&str>) -> client::Resp {
    let mut req = Request::builder().method(method).uri(proxy.admin_url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    send(&client(), req.body(Default::default()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_need_the_token_and_reads_stay_open() {
    let b = TestBackend::start("a").await;
    let dir = TempDir::new();
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "first-token-0123\n").unwrap();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&b, &token, false)).unwrap();
    let proxy = Proxy::start_at(dir, path, false).await;

    let r = call(&proxy, "POST", "/reload", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        r.headers
    );
    let r = call(&proxy, "POST", "/reload", Some("Bearer first-token-0124")).await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(
        call(&proxy, "POST", "/reload", Some("Basic first-token-0123"))
            .await
            .status,
        401
    );
    // Unknown and future endpoints are covered too: no token, no answer beyond 401.
    assert_eq!(
        call(&proxy, "POST", "/rollouts/r/promote", None)
            .await
            .status,
        401
    );
    assert_eq!(proxy.reload_event().attempts, 0, "no reload ran");

    let r = call(&proxy, "POST", "/reload", Some("Bearer first-token-0123")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(proxy.reload_event().attempts, 1);

    for path in ["/status", "/metrics", "/livez", "/readyz"] {
        assert_eq!(call(&proxy, "GET", path, None).await.status, 200, "{path}");
    }
    // Shadow mismatch records copy request headers: never open while a token is set.
    assert_eq!(call(&proxy, "GET", "/shadow/r", None).await.status, 401);
    let r = call(&proxy, "GET", "/shadow/r", Some("Bearer first-token-0123")).await;
    assert_ne!(r.status, 401, "{}", r.text());
    assert_eq!(get(&client(), &proxy.url("/")).await.status, 200);

    // Rotation: a new token file is picked up by the next reload (even with the config text
    // unchanged), authorised with the token in force.
    std::fs::write(&token, "second-token-4567\n").unwrap();
    let r = call(&proxy, "POST", "/reload", Some("Bearer first-token-0123")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["result"],
        "applied"
    );
    assert_eq!(
        call(&proxy, "POST", "/reload", Some("Bearer first-token-0123"))
            .await
            .status,
        401
    );
    let r = call(&proxy, "POST", "/reload", Some("Bearer second-token-4567")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // An emptied token file is a config error with its path; the old token keeps working.
    std::fs::write(&token, "\n").unwrap();
    let r = call(&proxy, "POST", "/reload", Some("Bearer second-token-4567")).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("admin.token_file"), "{}", r.text());
    assert!(r.text().contains("is empty"), "{}", r.text());
    assert_eq!(
        call(&proxy, "POST", "/reload", Some("Bearer second-token-4567"))
            .await
            .status,
        422,
        "still authorised by the token in force"
    );
    proxy.shutdown().await;
}

fn cli_status(admin: SocketAddr, token_file: Option<&std::path::Path>, env: Option<&str>) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["status", "--admin", &admin.to_string()])
        .env_remove("SWITCHYARD_ADMIN_TOKEN");
    if let Some(f) = token_file {
        cmd.arg("--token-file").arg(f);
    }
    if let Some(t) = env {
        cmd.env("SWITCHYARD_ADMIN_TOKEN", t);
    }
    let out = cmd.output().expect("run switchyard status");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401") || err.contains("token"), "{err}");
    }
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_reads_need_the_token_and_the_cli_sends_it() {
    let b = TestBackend::start("a").await;
    let dir = TempDir::new();
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "read-token-89ab").unwrap();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&b, &token, true)).unwrap();
    let proxy = Proxy::start_at(dir, path, false).await;

    assert_eq!(call(&proxy, "GET", "/status", None).await.status, 401);
    assert_eq!(call(&proxy, "GET", "/metrics", None).await.status, 401);
    assert_eq!(
        call(&proxy, "GET", "/status", Some("Bearer read-token-89ab"))
            .await
            .status,
        200
    );
    // Probes never need it.
    assert_eq!(call(&proxy, "GET", "/livez", None).await.status, 200);
    assert_eq!(call(&proxy, "GET", "/readyz", None).await.status, 200);

    let admin = proxy.admin;
    let token_path = token.clone();
    let (none, file, env, wrong) = tokio::task::spawn_blocking(move || {
        (
            cli_status(admin, None, None),
            cli_status(admin, Some(&token_path), None),
            cli_status(admin, None, Some("read-token-89ab")),
            cli_status(admin, None, Some("nope")),
        )
    })
    .await
    .unwrap();
    assert!(!none, "status without a token must fail");
    assert!(file, "--token-file");
    assert!(env, "SWITCHYARD_ADMIN_TOKEN");
    assert!(!wrong, "a wrong token must fail");
    proxy.shutdown().await;
}

/// Log lines of `switchyard run` up to "switchyard started"; the process is killed after.
fn startup_log(config: &std::path::Path) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--no-watch", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("switchyard started");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_without_a_token_is_warned_about() {
    let b = TestBackend::start("a").await;
    let dir = TempDir::new();
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "tok-0123456789").unwrap();
    let open = format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:0\" }}]\n\
         admin: {{ bind: \"0.0.0.0:0\" }}\n\
         upstreams:\n  a: {{ backends: {} }}\n\
         routes:\n  - {{ name: r, split: [{{ upstream: a, weight: 1 }}] }}\n",
        addrs(&[&b])
    );
    let guarded = open.replace(
        "admin: { bind: \"0.0.0.0:0\" }",
        &format!(
            "admin: {{ bind: \"0.0.0.0:0\", token_file: \"{}\" }}",
            token.display()
        ),
    );
    let (open_path, guarded_path) = (dir.0.join("open.yaml"), dir.0.join("guarded.yaml"));
    std::fs::write(&open_path, open).unwrap();
    std::fs::write(&guarded_path, guarded).unwrap();
    let (open_log, guarded_log) =
        tokio::task::spawn_blocking(move || (startup_log(&open_path), startup_log(&guarded_path)))
            .await
            .unwrap();
    let warned = |log: &[String]| log.iter().any(|l| l.contains("without admin.token_file"));
    assert!(warned(&open_log), "{open_log:#?}");
    assert!(!warned(&guarded_log), "{guarded_log:#?}");
}
