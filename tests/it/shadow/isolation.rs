//! The client's side: identical answers, nothing waits for a shadow that is slow, dead or
//! failing, and its failures stay its own.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_the_same_answers_with_shadowing_on_and_off() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (500, "text/plain", "shadow says no\n".into())).await;
    // Two routes to the same backend, by host: one shadows everything, one does not.
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\n  next: {{ backends: [\"{}\"] }}\nroutes:\n\
         \x20 - name: r\n    match: {{ host: on.test }}\n    split: [{{ upstream: app, weight: 1 }}]\n\
         \x20   shadow: {{ upstream: next, percent: 100, host: next.internal, methods: [GET, PUT, POST], compare: true }}\n\
         \x20 - name: off\n    match: {{ host: off.test }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
        app.addr, next.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let requests = |host: &'static str| {
        let url = |p: &str| proxy.url(p);
        vec![
            // A client claiming to be a shadow copy: the claim never reaches a backend.
            Request::get(url("/"))
                .header("host", host)
                .header("x-switchyard-shadow", "1")
                .body(Full::default())
                .unwrap(),
            Request::get(url("/status/404"))
                .header("host", host)
                .body(Full::default())
                .unwrap(),
            Request::put(url("/count"))
                .header("host", host)
                .body(Full::new(Bytes::from(vec![7u8; 3000])))
                .unwrap(),
            Request::post(url("/count"))
                .header("host", host)
                .body(Full::new(Bytes::from_static(b"abc")))
                .unwrap(),
        ]
    };
    for (on, off) in requests("on.test").into_iter().zip(requests("off.test")) {
        let (a, b) = (send(&c, on).await, send(&c, off).await);
        assert_eq!(a.status, b.status);
        assert_eq!(a.body, b.body);
        let mut ha = a.headers.clone();
        let mut hb = b.headers.clone();
        ha.remove("date");
        hb.remove("date");
        assert_eq!(ha, hb);
    }
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 4 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(n(&v, "5xx"), 4, "{v}");
    // The copies went out whole, marked, with the Host rewritten; the primary saw no mark.
    let got = next.got();
    let mut got_paths: Vec<(String, String)> = got
        .iter()
        .map(|g| (g.method.clone(), g.path.clone()))
        .collect();
    got_paths.sort();
    assert_eq!(
        got_paths,
        [
            ("GET", "/"),
            ("GET", "/status/404"),
            ("POST", "/count"),
            ("PUT", "/count")
        ]
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
    );
    for g in &got {
        assert_eq!(g.headers["x-switchyard-shadow"], "1");
        assert_eq!(g.headers["host"], "next.internal");
    }
    let put = got.iter().find(|g| g.method == "PUT").unwrap();
    assert_eq!(put.body, vec![7u8; 3000]);
    assert!(
        app.seen()
            .iter()
            .all(|s| !s.headers.contains_key("x-switchyard-shadow"))
    );
    assert_eq!(app.traffic(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_never_answers_costs_the_client_nothing_and_stays_bounded() {
    let app = TestBackend::start("app").await;
    let hole = BlackHole::start().await;
    let proxy = Proxy::start(&config(
        app.addr,
        hole.addr,
        "percent: 100, max_in_flight: 3, timeout: 60s",
        "",
    ))
    .await;
    let c = client();
    let first = get(&c, &proxy.url("/")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "app\n");
    // The client has its whole answer while its copy is still out.
    let v = shadow_view(&proxy).await;
    assert_eq!(v["in_flight"], 1, "{v}");
    assert_eq!(settled(&v), 0, "{v}");
    for _ in 0..9 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200);
    }
    // At most three copies out; the other seven were skipped, not queued.
    let v = shadow_view(&proxy).await;
    assert_eq!(v["in_flight"], 3, "{v}");
    assert_eq!(n(&v, "skipped_in_flight"), 7, "{v}");
    for _ in 0..2000 {
        if hole.requests.load(Ordering::SeqCst) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hole.requests.load(Ordering::SeqCst), 3);
    assert!(hole.open.load(Ordering::SeqCst) <= 3);

    // The shadow dies: its copies end as failures, every place comes back, nothing lingers.
    hole.cut();
    let v = wait_shadow(&proxy, "freed its places", |v| {
        v["in_flight"] == 0 && n(v, "failed") == 3
    })
    .await;
    assert_eq!(settled(&v), 10, "{v}");
    let b = proxy.backend_status("next", hole.addr).await;
    assert_eq!(b["in_flight"], 0, "{b}");
    // The primary saw none of it.
    let a = proxy.backend_status("app", app.addr).await;
    assert_eq!(a["outcomes"]["success"], 10, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_timeout_frees_its_place_and_its_connection() {
    let app = TestBackend::start("app").await;
    let hole = BlackHole::start().await;
    let proxy = Proxy::start(&config(
        app.addr,
        hole.addr,
        "percent: 100, max_in_flight: 2, timeout: 200ms",
        "",
    ))
    .await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    let v = wait_shadow(&proxy, "timed out", |v| {
        v["in_flight"] == 0 && settled(v) == 2
    })
    .await;
    assert_eq!(n(&v, "timeout") + n(&v, "skipped_in_flight"), 2, "{v}");
    assert!(n(&v, "timeout") >= 1, "{v}");
    // The timed-out connections were closed, not left open at the shadow.
    for _ in 0..2000 {
        if hole.open.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hole.open.load(Ordering::SeqCst), 0);
    let b = proxy.backend_status("next", hole.addr).await;
    assert!(b["outcomes"]["timeout"].as_u64().unwrap() >= 1, "{b}");
}

/// Primary and shadow answering JSON from these scripts, compared.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_5xx_never_open_a_primary_breaker() {
    let app = TestBackend::start("app").await;
    let bad = TestBackend::start("bad").await;
    bad.set_failing(100);
    let breaker = "circuit_breaker: { consecutive_failures: 3, open_for: 60s }";
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"], {breaker} }}\n  next: {{ backends: [\"{}\"], {breaker} }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: next, percent: 100 }}\n",
        app.addr, bad.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "app\n");
    }
    // The shadow's own breaker opened; the primary's is closed and saw no failure.
    proxy
        .wait_backend("next", bad.addr, "open", |b| {
            b["breaker"]["state"] == "open"
        })
        .await;
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 20 && v["in_flight"] == 0
    })
    .await;
    assert!(n(&v, "5xx") >= 3, "{v}");
    assert_eq!(n(&v, "5xx") + n(&v, "no_backend"), 20, "{v}");
    let a = proxy.backend_status("app", app.addr).await;
    assert_eq!(a["breaker"]["state"], "closed", "{a}");
    assert_eq!(a["outcomes"]["5xx"], 0, "{a}");
    assert_eq!(a["outcomes"]["success"], 20, "{a}");
    // Nothing of the shadow's shows in the route's request counts.
    let metrics = proxy.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("switchyard_requests_total") && l.contains("upstream=\"next\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_waits_for_the_primary_answer_to_be_under_way() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(app.addr, next.addr, "percent: 100", "")).await;
    let url = proxy.url("/hold/k");
    let client_req = tokio::spawn(async move { get(&client(), &url).await });
    app.wait_for_path("/hold/k").await;
    // While the primary has not answered, the copy stays back (its place is taken already).
    for _ in 0..30 {
        assert!(
            next.got().is_empty(),
            "the copy went out before the primary answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shadow_view(&proxy).await["in_flight"], 1);
    app.release("k");
    assert_eq!(client_req.await.unwrap().status, 200);
    let v = wait_shadow(&proxy, "sent the copy", |v| n(v, "success") == 1).await;
    assert_eq!(v["in_flight"], 0);
    assert_eq!(next.got()[0].path, "/hold/k");
}
