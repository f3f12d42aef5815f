//! The bounds and the choices: body cap, incomplete bodies, methods, sampling, reloads.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_are_not_mirrored() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 100, max_body_bytes: 1024, methods: [POST]",
        "",
    ))
    .await;
    // Known length over the cap; unknown length that grows past it; one under it.
    assert_eq!(
        post(&proxy.url("/count"), vec![1; 4096]).await.text(),
        "4096\n"
    );
    let resp = chunked_post(
        proxy.addr,
        "/count",
        &[vec![2; 600], vec![2; 600], vec![2; 600]],
    )
    .await;
    assert!(resp.ends_with("1800\n"), "{resp}");
    let resp = chunked_post(proxy.addr, "/count", &[vec![3; 500], vec![3; 500]]).await;
    assert!(resp.ends_with("1000\n"), "{resp}");
    assert_eq!(post(&proxy.url("/count"), vec![4; 10]).await.text(), "10\n");
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 4 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(n(&v, "skipped_body_too_large"), 2, "{v}");
    assert_eq!(n(&v, "success"), 2, "{v}");
    let mut bodies: Vec<Bytes> = next.got().into_iter().map(|g| g.body).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [Bytes::from(vec![3u8; 1000]), Bytes::from(vec![4u8; 10])]
    );
    // GET is not in `methods` here: counted, not sent.
    get(&client(), &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "counted the GET", |v| n(v, "skipped_method") == 1).await;
    assert_eq!(settled(&v), 5);
    assert_eq!(next.got().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_completes_is_not_mirrored_and_h2_requests_are() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 100, methods: [GET, POST]",
        "",
    ))
    .await;
    // Half a chunked body, then the client goes away.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /count HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    app.wait_for_path("/count").await;
    drop(s);
    let v = wait_shadow(&proxy, "abandoned the copy", |v| n(v, "abandoned") == 1).await;
    assert_eq!(settled(&v), 1, "{v}");
    // HTTP/2 from the client: the copy goes out as HTTP/1.1 with the same request.
    let r = get(&client::h2c_client(), &proxy.url("/h2?x=1")).await;
    assert_eq!(r.status, 200);
    let v = wait_shadow(&proxy, "sent the h2 copy", |v| n(v, "success") == 1).await;
    assert_eq!(settled(&v), 2, "{v}");
    let got = next.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/h2");
    assert_eq!(got[0].headers["x-switchyard-shadow"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_retries_mirrors_the_body_it_kept_for_replay() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 100, max_body_bytes: 1024",
        "    retries: { attempts: 1 }\n",
    ))
    .await;
    let put = |body: Vec<u8>| {
        Request::put(proxy.url("/count"))
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let c = client();
    assert_eq!(send(&c, put(vec![5; 100])).await.text(), "100\n");
    assert_eq!(send(&c, put(vec![6; 2000])).await.text(), "2000\n");
    let v = wait_shadow(&proxy, "settled", |v| {
        settled(v) == 2 && v["in_flight"] == 0
    })
    .await;
    assert_eq!(n(&v, "success"), 1, "{v}");
    assert_eq!(n(&v, "skipped_body_too_large"), 1, "{v}");
    let got = next.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, vec![5u8; 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_percent_holds_on_real_traffic() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(app.addr, next.addr, "percent: 20", "")).await;
    let c = client();
    for _ in 0..500 {
        get(&c, &proxy.url("/")).await;
    }
    let v = wait_shadow(&proxy, "settled", |v| {
        v["in_flight"] == 0 && settled(v) == n(v, "success")
    })
    .await;
    let shadowed = n(&v, "success");
    // 20% of 500 is 100; within 2 points is 90 to 110.
    assert!((90..=110).contains(&shadowed), "{shadowed} of 500: {v}");
    assert_eq!(next.got().len() as u64, shadowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sampling_shadows_a_user_always_or_never() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let proxy = Proxy::start(&config(
        app.addr,
        next.addr,
        "percent: 30, sample: sticky",
        "    sticky: { header: x-user-id }\n",
    ))
    .await;
    let c = client();
    for round in 0..3 {
        for user in 0..60 {
            let id = format!("user-{user}");
            get_with(&c, &proxy.url(&format!("/r{round}")), &[("x-user-id", &id)]).await;
        }
    }
    wait_shadow(&proxy, "settled", |v| {
        v["in_flight"] == 0 && settled(v) == n(v, "success")
    })
    .await;
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for g in next.got() {
        *per_user
            .entry(g.headers["x-user-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(!per_user.is_empty() && per_user.len() < 60, "{per_user:?}");
    assert!(
        per_user.values().all(|&n| n == 3),
        "a user was shadowed only sometimes: {per_user:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_counts_survive_a_reload_and_a_new_shadow_upstream_starts_its_own() {
    let app = TestBackend::start("app").await;
    let next = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let other = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    // Every request is shadowed (percent 100), so counts are exact; the reload changes the
    // shadow's timeout instead.
    let yaml = |upstream: &str, timeout: &str| {
        format!(
            "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\n  next: {{ backends: [\"{}\"] }}\n  other: {{ backends: [\"{}\"] }}\n\
             routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n    shadow: {{ upstream: {upstream}, percent: 100, timeout: {timeout} }}\n",
            app.addr, next.addr, other.addr
        )
    };
    let proxy = Proxy::start(&yaml("next", "5s")).await;
    let c = client();
    for _ in 0..3 {
        get(&c, &proxy.url("/")).await;
    }
    wait_shadow(&proxy, "settled", |v| n(v, "success") == 3).await;
    let ev = proxy.rewrite(&yaml("next", "4s")).await;
    assert_eq!(ev.rejected, 0);
    get(&c, &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "kept counting", |v| n(v, "success") == 4).await;
    assert_eq!(v["timeout_ms"], 4000);
    // Another shadow upstream: its own series, from zero.
    proxy.rewrite(&yaml("other", "4s")).await;
    get(&c, &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "counted the new upstream", |v| n(v, "success") == 1).await;
    assert_eq!(v["upstream"], "other");
    assert_eq!(other.got().len(), 1);
    assert_eq!(next.got().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_says_which_routes_have_no_shadow() {
    let app = TestBackend::start("app").await;
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\nroutes:\n  - name: plain\n    split: [{{ upstream: app, weight: 1 }}]\n",
        app.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();
    let r = get(&c, &proxy.admin_url("/shadow/plain")).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("has no `shadow`"), "{}", r.text());
    let r = get(&c, &proxy.admin_url("/shadow/nope")).await;
    assert_eq!(r.status, 404);
}
