//! Hot reload: by file rewrite and symlink swap; invalid configs; streams and connections
//! across a reload; listeners added by a reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::support::proxy::{TempDir, write_atomic};
use crate::support::*;

/// One route sending everything to `to`, with both upstreams defined.
fn all_to(blue: &TestBackend, green: &TestBackend, to: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  blue: {{ backends: {} }}\n  green: {{ backends: {} }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: {to}, weight: 1 }}]\n",
        addrs(&[blue]),
        addrs(&[green])
    )
}

/// `base` with a second listener, named `extra`, on `addr`.
fn with_extra_listener(base: &str, addr: std::net::SocketAddr) -> String {
    base.replace(
        "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]",
        &format!("listeners: [{{ name: public, bind: \"127.0.0.1:0\" }}, {{ name: extra, bind: \"{addr}\" }}]"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_file_changes_routing() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let proxy = Proxy::start(&all_to(&blue, &green, "blue")).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "blue");
    let ev = proxy.rewrite(&all_to(&blue, &green, "green")).await;
    assert_eq!((ev.generation, ev.rejected), (2, 0));
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "green");
}

/// The way a Kubernetes ConfigMap volume updates: `switchyard.yaml -> ..data/switchyard.yaml`,
/// `..data -> ..v1`; an update writes `..v2` and renames a new `..data` symlink over the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_changes_routing() {
    use std::os::unix::fs::symlink;
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let dir = TempDir::new();
    let root = dir.0.clone();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(
        root.join("..v1/switchyard.yaml"),
        all_to(&blue, &green, "blue"),
    )
    .unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/switchyard.yaml", root.join("switchyard.yaml")).unwrap();
    let proxy = Proxy::start_at(dir, root.join("switchyard.yaml"), true).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "blue");

    // Several updates in a row: each swap replaces the directory the file resolves to.
    for (v, to) in [(2, "green"), (3, "blue"), (4, "green")] {
        let before = proxy.reload_event();
        let (dir, old) = (format!("..v{v}"), format!("..v{}", v - 1));
        std::fs::create_dir(root.join(&dir)).unwrap();
        std::fs::write(
            root.join(&dir).join("switchyard.yaml"),
            all_to(&blue, &green, to),
        )
        .unwrap();
        symlink(&dir, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join(old)).unwrap();
        let mut ev = proxy.wait_reload_after(before).await;
        // The swap is several events; wait until the one that applied it.
        while ev.generation < before.generation + 1 {
            ev = proxy.wait_reload_after(ev).await;
        }
        assert_eq!(ev.rejected, 0);
        assert_eq!(get(&c, &proxy.url("/")).await.backend(), to, "after ..v{v}");
    }
}

/// `rm -rf dir; mkdir dir; cp new.yaml dir/`: the watch on the old directory ends with it; the
/// watcher must watch the new one, and keep seeing edits there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_survives_its_directory_being_replaced() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let dir = TempDir::new();
    let conf = dir.0.join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("switchyard.yaml");
    std::fs::write(&path, all_to(&blue, &green, "blue")).unwrap();
    let proxy = Proxy::start_at(dir, path.clone(), true).await;
    let c = client();
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "blue");

    // Waits until the generation after `before` is in force (a reload that read the directory
    // between its removal and the copy is rejected and does not count).
    let applied = |before: switchyard::shared::ReloadEvent| {
        let proxy = &proxy;
        async move {
            let mut ev = proxy.wait_reload_after(before).await;
            while ev.generation <= before.generation {
                ev = proxy.wait_reload_after(ev).await;
            }
            ev
        }
    };
    for (round, to) in [(1, "green"), (2, "blue")] {
        let before = proxy.reload_event();
        std::fs::remove_dir_all(&conf).unwrap();
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(&path, all_to(&blue, &green, to)).unwrap();
        applied(before).await;
        assert_eq!(
            get(&c, &proxy.url("/")).await.backend(),
            to,
            "round {round}"
        );

        // Edits in the new directory are seen: by rename, then in place.
        let back = if to == "green" { "blue" } else { "green" };
        let before = proxy.reload_event();
        write_atomic(&path, &all_to(&blue, &green, back));
        applied(before).await;
        assert_eq!(get(&c, &proxy.url("/")).await.backend(), back);
        let before = proxy.reload_event();
        std::fs::write(&path, all_to(&blue, &green, to)).unwrap();
        applied(before).await;
        assert_eq!(get(&c, &proxy.url("/")).await.backend(), to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_keeps_the_old_routing_and_every_request_is_answered() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let proxy = Proxy::start(&all_to(&blue, &green, "blue")).await;
    let url = proxy.url("/");
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let c = client();
                let mut answered = Vec::new();
                while !stop.load(Ordering::Relaxed) || answered.is_empty() {
                    let r = get(&c, &url).await;
                    answered.push((r.status, r.backend().to_owned()));
                }
                answered
            })
        })
        .collect();

    // Unknown upstream and a typo: both reported, nothing applied.
    let bad = all_to(&blue, &green, "greeen").replace("backends:", "backendz:");
    let ev = proxy.rewrite(&bad).await;
    assert_eq!((ev.generation, ev.rejected), (1, 1));
    let ev = proxy
        .rewrite(&all_to(&blue, &green, "blue").replace("weight: 1", "weight: 0"))
        .await;
    assert_eq!((ev.generation, ev.rejected), (1, 2));
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for l in loops {
        for (status, backend) in l.await.unwrap() {
            assert_eq!((status.as_u16(), backend.as_str()), (200, "blue"));
            total += 1;
        }
    }
    assert!(total >= 4);
    let c = client();
    let metrics = get(&c, &proxy.admin_url("/metrics")).await;
    assert!(
        metrics
            .text()
            .contains("switchyard_config_reloads_total{result=\"rejected\"} 2")
    );
    assert!(metrics.text().contains("switchyard_config_generation 1"));

    // POST /reload reports every error with its path.
    write_atomic(&proxy.config_path, &bad);
    let r = proxy.post_reload().await;
    assert_eq!(r.status, 422);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"upstreams.blue.backendz"), "{paths:?}");
    assert!(paths.contains(&"routes[0].split[0].upstream"), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_started_before_a_reload_completes_after_it() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let proxy = Proxy::start(&all_to(&blue, &green, "blue")).await;
    let c = client();
    let resp = c
        .request(
            Request::get(proxy.url("/stream/s1"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first\n");

    // The new config drops blue altogether.
    let green_only = format!(
        "{HEAD}upstreams:\n  green: {{ backends: {} }}\nroutes:\n  - name: r\n    split: [{{ upstream: green, weight: 1 }}]\n",
        addrs(&[&green])
    );
    let ev = proxy.rewrite(&green_only).await;
    assert_eq!((ev.generation, ev.rejected), (2, 0));
    blue.release("s1");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"rest\n");
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_close_open_client_connections() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let proxy = Proxy::start(&all_to(&blue, &green, "blue")).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = || {
        Request::get("/")
            .header("host", "a")
            .body(Empty::new())
            .unwrap()
    };
    let r = sender.send_request(req()).await.unwrap();
    assert_eq!(r.headers()["x-backend"], "blue");
    r.into_body().collect().await.unwrap();

    proxy.rewrite(&all_to(&blue, &green, "green")).await;
    sender.ready().await.expect("connection still open");
    let r = sender.send_request(req()).await.unwrap();
    assert_eq!(
        r.headers()["x-backend"],
        "green",
        "same connection, new routing"
    );
    assert!(!conn.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_config_and_a_port_in_use_rejects_the_reload() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let base = all_to(&blue, &green, "blue");
    let proxy = Proxy::start(&base).await;
    let c = client();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let with_listener = |addr| with_extra_listener(&base, addr);
    let ev = proxy.rewrite(&with_listener(taken_addr)).await;
    assert_eq!((ev.generation, ev.rejected), (1, 1));
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "blue");

    drop(taken);
    let ev = proxy.rewrite(&with_listener(taken_addr)).await;
    assert_eq!((ev.generation, ev.rejected), (2, 1));
    let r = get(&c, &format!("http://{taken_addr}/")).await;
    assert_eq!(r.backend(), "blue");
    assert_eq!(proxy.running().listeners().len(), 2);
}

/// Another process listening with SO_REUSEPORT (as a switchyard with several workers does):
/// a reload adding a listener on its address is rejected, not joined to its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_share_a_port_with_another_process_listening_with_reuseport() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let base = all_to(&blue, &green, "blue");
    let dir = TempDir::new();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, &base).unwrap();
    let proxy = Proxy::start_full(dir, path, true, 2).await;

    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_address(true).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    other.listen(16).unwrap();
    let held = other.local_addr().unwrap().as_socket().unwrap();
    let ev = proxy.rewrite(&with_extra_listener(&base, held)).await;
    assert_eq!((ev.generation, ev.rejected), (1, 1));
    assert_eq!(proxy.running().listeners().len(), 1);
}

/// A rejected reload reports what `check` does: the structural errors (unknown key, wrong type,
/// missing key) and the value checks together, each with its path, in one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_reports_every_error_of_the_file_at_once() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let proxy = Proxy::start_with(&all_to(&blue, &green, "blue"), false).await;
    write_atomic(
        &proxy.config_path,
        include_str!("../../config/invalid/six-mistakes-mixed.yaml"),
    );
    let c = client();
    let r = proxy.post_reload().await;
    assert_eq!(r.status, 422);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "routes[0].split[1].upstream",
            "routes[0].timout",
            "routes[1].match.path_prefix",
            "routes[1].split[0].upstream",
            "routes[1].split[0].weight",
            "upstreams.checkout-blue.connect_timeout",
        ],
        "{body:#}"
    );
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "blue");
}
