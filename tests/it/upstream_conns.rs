//! Connections to backends under trouble that is not the backend's: a keep-alive connection the
//! backend closed behind our back, and the proxy itself out of file descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::bin::Process;
use crate::support::proxy::{TempDir, sample};
use crate::support::*;

/// A backend that answers one request per connection and then closes it, without saying
/// `Connection: close` (as some servers do when they reach their own keep-alive limit): the
/// proxy keeps the connection for reuse and learns it is closed only when it tries.
async fn closing_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&answered);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
                count.fetch_add(1, Ordering::Relaxed);
                // Closed a moment later, as a server closes an idle keep-alive connection: the
                // proxy has put the connection back in its pool by then, and may be sending the
                // next request on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            });
        }
    });
    (addr, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_the_backend_closed_costs_no_request() {
    let (backend, answered) = closing_backend().await;
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n  app:\n    backends: ['{backend}']\nroutes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n"
    ))
    .await;
    let url = proxy.url("/item");
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                let mut failed = Vec::new();
                for _ in 0..250 {
                    let r = get(&c, &url).await;
                    if r.status != 200 {
                        failed.push((r.status.as_u16(), r.text().to_owned()));
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of 4000 GETs failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(answered.load(Ordering::Relaxed), 4000);
    // Resent on a fresh connection, counted; the backend did nothing wrong.
    let m = proxy.metrics().await;
    let series = format!(
        "switchyard_upstream_resends_total{{upstream=\"app\",backend=\"{backend}\",reason=\"stale_connection\"}}"
    );
    assert!(sample(&m, &series) > Some(0.0), "{series} missing: {m}");
    let failures = format!(
        "switchyard_upstream_outcomes_total{{upstream=\"app\",backend=\"{backend}\",outcome=\"reset\"}}"
    );
    assert_eq!(sample(&m, &failures), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_stale_connection_is_not_sent_twice() {
    // POST is not idempotent: once it may have reached the backend it is never sent again
    // (without a retry policy). Here every connection is fresh or stale at random; the point
    // is that the backend never sees more requests than clients sent.
    let (backend, answered) = closing_backend().await;
    let proxy = Proxy::start(&format!(
        "{HEAD}upstreams:\n  app:\n    backends: ['{backend}']\nroutes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n"
    ))
    .await;
    let c = client();
    let mut ok = 0;
    for _ in 0..200 {
        let req = http::Request::post(proxy.url("/item"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        if send(&c, req).await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(answered.load(Ordering::Relaxed), ok);
}

/// The lowest file descriptor number the process does not have open.
fn lowest_free_fd(pid: u32) -> u32 {
    let open: std::collections::BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap()
}

/// Sets the soft open-file limit of a running process (the hard one stays: raising it back
/// may need a privilege the test does not have).
fn set_nofile(pid: u32, soft: u64) {
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit (util-linux)")
        .success();
    assert!(ok, "prlimit failed");
}

/// The soft open-file limit of a running process.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find_map(|l| {
            l.strip_prefix("Max open files")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("Max open files")
}

/// One request on an open keep-alive connection; the status.
async fn request(s: &mut TcpStream, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    crate::support::raw::read_response(s).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_not_the_backends_fault() {
    let backend = TestBackend::start("b").await;
    let dir = TempDir::new();
    let config = dir.0.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{ bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
             upstreams:\n  app:\n    backends: ['{}']\n    circuit_breaker: {{ consecutive_failures: 3, open_for: 60s }}\n\
             routes:\n  - name: r\n    match: {{ path_prefix: /app }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
            backend.addr
        ),
    )
    .unwrap();
    let p = Process::run(&config, &["--workers", "1", "--no-watch"]);
    let pid = p.child.id();
    // One client connection, accepted and served (an unrouted path: no backend connection).
    let mut conn = TcpStream::connect(p.proxy).await.unwrap();
    assert_eq!(request(&mut conn, "/nowhere").await, 404);
    // Every descriptor number below the limit is taken: the next socket() fails with EMFILE.
    let before = soft_nofile(pid);
    let free = lowest_free_fd(pid);
    set_nofile(pid, u64::from(free));
    for _ in 0..10 {
        let status = request(&mut conn, "/app").await;
        assert_eq!(status, 503, "the proxy's own shortage");
    }
    // A new client now cannot be accepted: the kernel completes its handshake, the proxy's
    // accept fails, and is counted as the proxy's own shortage.
    let mut late = TcpStream::connect(p.proxy).await.unwrap();
    p.wait_log("accept failed");
    set_nofile(pid, before);
    // Descriptors are back: the backend takes traffic at once (its breaker never opened), and
    // the waiting client is accepted and served.
    assert_eq!(request(&mut conn, "/app").await, 200);
    assert_eq!(request(&mut late, "/app").await, 200);
    let m = crate::support::get(&client(), &format!("http://{}/metrics", p.admin)).await;
    let m = m.text();
    let be = backend.addr;
    assert_eq!(
        sample(
            m,
            &format!("switchyard_breaker_state{{upstream=\"app\",backend=\"{be}\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            &format!(
                "switchyard_upstream_outcomes_total{{upstream=\"app\",backend=\"{be}\",outcome=\"connect_failure\"}}"
            )
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            "switchyard_local_resource_errors_total{op=\"connect\",error=\"EMFILE\"}"
        ),
        Some(10.0),
        "{m}"
    );
    let accepts = sample(
        m,
        "switchyard_local_resource_errors_total{op=\"accept\",error=\"EMFILE\"}",
    );
    assert!(accepts >= Some(1.0), "{m}");
}
