//! The real binary: SIGHUP reloads, SIGTERM drains and exits 0, large bodies in bounded memory.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use crate::support::bin::Process;
use crate::support::proxy::{TempDir, write_atomic};
use crate::support::*;

fn config(b: &TestBackend, upstream: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  {upstream}: {{ backends: {} }}\nroutes:\n  - name: r\n    split: [{{ upstream: {upstream}, weight: 1 }}]\n",
        addrs(&[b])
    )
}

async fn generation(admin: std::net::SocketAddr) -> u64 {
    let r = get(&client(), &format!("http://{admin}/status")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["generation"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains_then_exits_zero() {
    let app = TestBackend::start("app").await;
    let dir = TempDir::new();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&app, "first")).unwrap();
    let mut sy = Process::run(&path, &["--no-watch"]);
    let c = client();
    let url = format!("http://{}/", sy.proxy);
    assert_eq!(get(&c, &url).await.status, 200);

    write_atomic(&path, &config(&app, "second"));
    assert_eq!(
        generation(sy.admin).await,
        1,
        "--no-watch: a write alone does nothing"
    );
    sy.signal("HUP");
    sy.wait_log("config applied");
    assert_eq!(generation(sy.admin).await, 2);

    let slow = format!("http://{}/hold/term", sy.proxy);
    let in_flight = tokio::spawn(async move { get(&client(), &slow).await });
    app.wait_for_path("/hold/term").await;
    sy.signal("TERM");
    sy.wait_log("draining");
    assert!(
        sy.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    app.release("term");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    let status = tokio::task::spawn_blocking(move || sy.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_download_and_upload_use_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let app = TestBackend::start("app").await;
    let dir = TempDir::new();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&app, "app")).unwrap();
    let sy = Process::run(&path, &[]);
    let c = client();
    assert_eq!(get(&c, &format!("http://{}/", sy.proxy)).await.status, 200);
    let baseline = sy.peak_rss_kib();

    let resp = c
        .request(
            Request::get(format!("http://{}/bytes/{SIZE}", sy.proxy))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);

    let upload = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>,
    >>();
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let stream =
        futures_util::stream::iter((0..400).map(move |_| Ok(Frame::data(chunk.clone())))).boxed();
    let resp = upload
        .request(
            Request::post(format!("http://{}/count", sy.proxy))
                .body(StreamBody::new(stream))
                .unwrap(),
        )
        .await
        .unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&text).unwrap().trim(), SIZE.to_string());

    let grew_mib = (sy.peak_rss_kib().saturating_sub(baseline)) / 1024;
    eprintln!(
        "peak RSS {} KiB, baseline {baseline} KiB",
        sy.peak_rss_kib()
    );
    assert!(
        grew_mib < 32,
        "peak RSS grew by {grew_mib} MiB moving 200 MiB"
    );
    let _ = Duration::ZERO;
}

/// A second `switchyard run` on an address the first holds exits 1 with the README's message,
/// with several workers too (whose SO_REUSEPORT sockets could otherwise join the first's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_a_held_address_exits_1_whatever_the_workers() {
    let app = TestBackend::start("app").await;
    let dir = TempDir::new();
    let first = dir.0.join("first.yaml");
    std::fs::write(&first, config(&app, "first")).unwrap();
    let sy = Process::run(&first, &["--workers", "2"]);
    let second = dir.0.join("second.yaml");
    let held = format!("listeners: [{{ name: public, bind: \"{}\" }}]", sy.proxy);
    std::fs::write(
        &second,
        config(&app, "second").replace(
            "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]",
            &held,
        ),
    )
    .unwrap();
    for workers in ["1", "2", "4"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--no-watch", "--workers", workers, "-c"])
            .arg(&second)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // One that started (sharing the port) would run until killed.
        let mut exited = None;
        for _ in 0..3000 {
            exited = child.try_wait().unwrap();
            if exited.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if exited.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            exited.is_some(),
            "--workers {workers}: started beside the first: {stderr}"
        );
        assert_eq!(out.status.code(), Some(1), "--workers {workers}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "listeners[0].bind: {} is already in use by another process",
                sy.proxy
            )),
            "--workers {workers}: {stderr}"
        );
    }
    assert_eq!(
        get(&client(), &format!("http://{}/", sy.proxy))
            .await
            .status,
        200
    );
}
