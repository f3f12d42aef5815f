//! The admin and ops listeners: what the ops listener serves (and refuses), the header read
//! timeout and connection cap of both, and every accept loop under file descriptor exhaustion.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::bin::Process;
use crate::support::proxy::{TempDir, sample};
use crate::support::*;

fn config(app: &TestBackend, extra: &str) -> String {
    format!(
        "{HEAD}{extra}upstreams:\n  app: {{ backends: {} }}\nroutes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        addrs(&[app])
    )
}

async fn call(method: Method, url: &str) -> client::Resp {
    send(
        &client(),
        Request::builder()
            .method(method)
            .uri(url)
            .body(Default::default())
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_serves_probes_and_metrics_and_nothing_else() {
    let app = TestBackend::start("app").await;
    let proxy = Proxy::start(&config(&app, "ops: { bind: \"127.0.0.1:0\" }\n")).await;
    let ops = proxy.running().ops_addr.expect("ops listener started");
    assert_ne!(ops, proxy.admin);
    let url = |p: &str| format!("http://{ops}{p}");
    assert_eq!(get(&client(), &proxy.url("/")).await.status, 200);

    assert_eq!(get(&client(), &url("/livez")).await.status, 200);
    assert_eq!(get(&client(), &url("/readyz")).await.text(), "ready\n");
    let metrics = get(&client(), &url("/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("switchyard_requests_total{route=\"r\",upstream=\"app\""),
        "{}",
        metrics.text()
    );

    for (method, path) in [
        (Method::POST, "/reload"),
        (Method::GET, "/reload"),
        (Method::GET, "/status"),
        (Method::GET, "/rollouts"),
        (Method::GET, "/rollouts/r"),
        (Method::POST, "/rollouts/r/abort"),
        (Method::POST, "/rollouts/r/promote"),
        (Method::GET, "/shadow/r"),
        (Method::GET, "/"),
    ] {
        let r = call(method.clone(), &url(path)).await;
        assert_eq!(r.status, 404, "{method} {path} on the ops listener");
        // Not even the list of what the admin API offers.
        assert!(!r.text().contains("POST"), "{method} {path}: {}", r.text());
    }
    assert_eq!(call(Method::POST, &url("/metrics")).await.status, 405);
    assert_eq!(
        proxy.reload_event().attempts,
        0,
        "nothing reloaded through the ops listener"
    );
    // The admin API is where it was, with everything.
    assert_eq!(
        get(&client(), &proxy.admin_url("/status")).await.status,
        200
    );
}

/// Reads until the server closes the connection; false if it is still open after 20 s.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_ops_close_slow_heads_and_connections_over_their_cap() {
    let app = TestBackend::start("app").await;
    let limits = "max_connections: 3, header_read_timeout: 500ms";
    let proxy = Proxy::start(
        &config(
            &app,
            &format!("ops: {{ bind: \"127.0.0.1:0\", {limits} }}\n"),
        )
        .replace(
            "admin: { bind: \"127.0.0.1:0\" }",
            &format!("admin: {{ bind: \"127.0.0.1:0\", {limits} }}"),
        ),
    )
    .await;
    let ops = proxy.running().ops_addr.unwrap();
    for (name, addr) in [("admin", proxy.admin), ("ops", ops)] {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(half_sent(addr).await);
        }
        // The cap is full: the next connection is accepted and closed at once, before any
        // header timeout could apply (it sends nothing).
        let mut over = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut over).await, "{name}: over the cap");
        // The half-sent heads are closed by the header read timeout.
        for s in &mut held {
            assert!(closed_by_server(s).await, "{name}: a half-sent head");
        }
        drop(held);
        // A kept-alive connection that goes quiet is closed too.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /livez HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(
            closed_by_server(&mut idle).await,
            "{name}: an idle keep-alive"
        );

        let m = proxy
            .wait_metric(
                &format!(
                    "switchyard_limit_rejections_total{{listener=\"{name}\",limit=\"header_read_timeout\"}}"
                ),
                4.0,
            )
            .await;
        let over_cap = format!(
            "switchyard_limit_rejections_total{{listener=\"{name}\",limit=\"max_connections\"}}"
        );
        assert!(sample(&m, &over_cap) >= Some(1.0), "{over_cap}: {m}");
        // Slots come back: a whole request is answered.
        assert_eq!(
            get(&client(), &format!("http://{addr}/livez")).await.status,
            200
        );
    }
}

/// With the process out of file descriptors and a client waiting at the admin port, the accept
/// loops pause instead of spinning, log a few lines (with a count of what they left out), and
/// the admin API answers again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loops_back_off_and_recover() {
    let dir = TempDir::new();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(
        &path,
        "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]\nadmin: { bind: \"127.0.0.1:0\" }\nupstreams: { app: { backends: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, split: [{ upstream: app, weight: 1 }] }]\n",
    )
    .unwrap();
    let sy = Process::run_with_fd_limit(&path, &["--workers", "1", "--no-watch"], 64);
    // More connections than it has descriptors, held open: it accepts until EMFILE.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(sy.proxy).await.unwrap());
    }
    sy.wait_log("accept failed");
    // A client at the admin port while descriptors are out.
    let mut waiting = TcpStream::connect(sy.admin).await.unwrap();
    waiting
        .write_all(b"GET /livez HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // The window over which the log is counted (a measurement, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines: Vec<String> = sy
        .lines
        .try_iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("listener=admin")),
        "the admin loop failed too: {lines:?}"
    );
    // At most a line a second per listener (two listeners, three seconds, plus the edges).
    assert!(lines.len() <= 10, "{} lines: {lines:#?}", lines.len());
    assert!(lines.iter().all(|l| l.contains("suppressed=")), "{lines:?}");

    drop(held);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), waiting.read_to_string(&mut answer))
        .await
        .expect("the waiting admin request was not answered within 20 s of freeing descriptors")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let m = get(&client(), &format!("http://{}/metrics", sy.admin)).await;
    let m = m.text();
    for listener in ["public", "admin"] {
        let series = format!("switchyard_accept_errors_total{{listener=\"{listener}\"}}");
        assert!(sample(m, &series) >= Some(1.0), "{series}: {m}");
    }
    assert_eq!(
        get(&client(), &format!("http://{}/status", sy.admin))
            .await
            .status,
        200
    );
}
