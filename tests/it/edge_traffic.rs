//! Per-route `rate_limit` and `fault`, on real sockets: counts of what the client and the
//! backends saw, never timings.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::support::proxy::sample;
use crate::support::*;

fn one_route(backend: &TestBackend, extra: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  a: {{ backends: {} }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: a, weight: 1 }}]\n{extra}",
        addrs(&[backend])
    )
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on loopback).
fn client_from(ip: &str) -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(ip.parse().unwrap()));
    Client::builder(TokioExecutor::new()).build(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_limit_lets_the_burst_through_and_answers_429_with_retry_after() {
    let b = TestBackend::start("a").await;
    // A token every 100 s: nothing refills while the test runs, whatever the machine's speed.
    let proxy = Proxy::start(&one_route(
        &b,
        "    rate_limit: { requests_per_second: 0.01, burst: 5 }\n",
    ))
    .await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        if r.status == 429 {
            let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=100).contains(&after), "Retry-After {after}");
            assert_eq!(r.headers["x-switchyard-error"], "rate-limited");
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 15], "{statuses:?}");
    assert_eq!(b.traffic(), 5, "refused requests never reach the backend");
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "switchyard_rate_limited_total{route=\"r\"}"),
        Some(15.0),
        "{m}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_bucket_refills_at_the_rate() {
    let b = TestBackend::start("a").await;
    let proxy = Proxy::start(&one_route(
        &b,
        "    rate_limit: { requests_per_second: 1, burst: 2 }\n",
    ))
    .await;
    let c = client();
    let mut refused = 0;
    while refused == 0 {
        if get(&c, &proxy.url("/")).await.status == 429 {
            refused += 1;
        }
        assert!(b.traffic() < 1000, "the limit never refused anything");
    }
    // A token comes back after 1 s: poll (bounded) until a request passes again.
    let before = b.traffic();
    for _ in 0..2000 {
        if get(&c, &proxy.url("/")).await.status == 200 {
            assert_eq!(b.traffic(), before + 1);
            proxy.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the bucket never refilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_limits_keep_keys_apart() {
    let b = TestBackend::start("a").await;
    let config = format!(
        "{HEAD}upstreams:\n  a: {{ backends: {} }}\n\
         routes:\n  - name: by-key\n    match: {{ path_prefix: /key }}\n    split: [{{ upstream: a, weight: 1 }}]\n\
         \x20   rate_limit: {{ requests_per_second: 0.01, burst: 3, key: \"header:x-api-key\" }}\n\
         \x20 - name: by-ip\n    match: {{ path_prefix: /ip }}\n    split: [{{ upstream: a, weight: 1 }}]\n\
         \x20   rate_limit: {{ requests_per_second: 0.01, burst: 2, key: client_ip }}\n",
        addrs(&[&b])
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    let passed = |key: Option<&'static str>| {
        let c = c.clone();
        let url = proxy.url("/key");
        async move {
            let mut n = 0;
            for _ in 0..6 {
                let headers: Vec<(&str, &str)> =
                    key.map(|k| ("x-api-key", k)).into_iter().collect();
                if get_with(&c, &url, &headers).await.status == 200 {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(passed(Some("alice")).await, 3);
    assert_eq!(passed(Some("bob")).await, 3, "bob has his own bucket");
    assert_eq!(passed(Some("alice")).await, 0, "alice's is still empty");
    assert_eq!(
        passed(None).await,
        3,
        "requests without the key share one bucket"
    );

    for ip in ["127.0.0.2", "127.0.0.3"] {
        let c = client_from(ip);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get(&c, &proxy.url("/ip")).await.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 429, 429], "client {ip}");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "switchyard_rate_limited_total{route=\"by-key\"}"),
        Some(3.0 + 3.0 + 6.0 + 3.0)
    );
    assert_eq!(
        sample(&m, "switchyard_rate_limited_total{route=\"by-ip\"}"),
        Some(4.0)
    );
    proxy.shutdown().await;
}

/// Sends `n` GETs, `concurrency` at a time; returns (status, fault header) of each.
async fn blast(url: String, n: usize, concurrency: usize) -> Vec<(u16, String, String)> {
    let c = client();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (c, url) = (c.clone(), url.clone());
        let count = n / concurrency + usize::from(w < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let r = get(&c, &url).await;
                let fault = r
                    .headers
                    .get("x-switchyard-fault")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                out.push((r.status.as_u16(), fault, r.backend().to_owned()));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn within_two_points(count: usize, total: usize, percent: f64) -> bool {
    let got = count as f64 * 100.0 / total as f64;
    (got - percent).abs() <= 2.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_percentages_hold_over_5000_requests() {
    let b = TestBackend::start("a").await;
    let proxy = Proxy::start(&one_route(
        &b,
        "    fault:\n      delay: { percent: 20, duration: 1ms }\n      abort: { percent: 10, status: 503 }\n",
    ))
    .await;
    let n = 5000;
    let results = blast(proxy.url("/"), n, 8).await;
    assert_eq!(results.len(), n);
    let aborted = results.iter().filter(|r| r.1.contains("abort")).count();
    let delayed = results.iter().filter(|r| r.1.contains("delay")).count();
    assert!(
        within_two_points(aborted, n, 10.0),
        "aborted {aborted} of {n}"
    );
    assert!(
        within_two_points(delayed, n, 20.0),
        "delayed {delayed} of {n}"
    );
    for (status, fault, backend) in &results {
        if fault.contains("abort") {
            assert_eq!(*status, 503);
            assert_eq!(backend, "", "an abort never reaches the backend");
        } else {
            assert_eq!(*status, 200);
            assert_eq!(backend, "a");
        }
    }
    assert_eq!(
        b.traffic(),
        n - aborted,
        "aborted requests never reached the backend"
    );
    let m = proxy.metrics().await;
    let fault = |kind: &str| {
        sample(
            &m,
            &format!(
                "switchyard_faults_injected_total{{route=\"r\",upstream=\"a\",kind=\"{kind}\"}}"
            ),
        )
    };
    assert_eq!(fault("abort"), Some(aborted as f64), "{m}");
    assert_eq!(fault("delay"), Some(delayed as f64), "{m}");
    assert_eq!(
        sample(
            &m,
            "switchyard_requests_total{route=\"r\",upstream=\"a\",backend=\"\",code_class=\"5xx\"}"
        ),
        Some(aborted as f64),
        "aborts are the upstream's answers in the route's numbers"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_scoped_abort_fails_only_that_upstream_and_spares_its_breakers() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let config = format!(
        "{HEAD}upstreams:\n  blue: {{ backends: {} }}\n  green: {{ backends: {} }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: blue, weight: 1 }}, {{ upstream: green, weight: 1 }}]\n\
         \x20   fault: {{ upstream: green, abort: {{ percent: 100, status: 502 }}, delay: {{ percent: 100, duration: 1ms }} }}\n",
        addrs(&[&blue]),
        addrs(&[&green])
    );
    let proxy = Proxy::start(&config).await;
    let results = blast(proxy.url("/"), 200, 4).await;
    let aborted: Vec<_> = results.iter().filter(|r| r.0 == 502).collect();
    assert_eq!(
        aborted.len(),
        100,
        "half the split is green, and all of it fails"
    );
    assert!(aborted.iter().all(|r| r.1 == "delay, abort"), "{aborted:?}");
    for r in results.iter().filter(|r| r.0 != 502) {
        assert_eq!((r.0, r.1.as_str(), r.2.as_str()), (200, "", "blue"));
    }
    assert_eq!(green.traffic(), 0);
    assert_eq!(blue.traffic(), 100);
    let status = proxy.status().await;
    let fault = &status["routes"][0]["fault"];
    assert_eq!(fault["upstream"], "green", "{status}");
    assert_eq!(fault["injected"]["green"]["abort"], 100, "{status}");
    assert!(fault["injected"].get("blue").is_none(), "{status}");
    let m = proxy.metrics().await;
    let g = green.addr;
    assert_eq!(
        sample(
            &m,
            &format!("switchyard_breaker_state{{upstream=\"green\",backend=\"{g}\"}}")
        ),
        Some(0.0),
        "a fault says nothing about a backend: its breaker stays closed"
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_requests_total{route=\"r\",upstream=\"green\",backend=\"\",code_class=\"5xx\"}"
        ),
        Some(100.0)
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_faults_injected_total{route=\"r\",upstream=\"green\",kind=\"abort\"}"
        ),
        Some(100.0)
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_faults_injected_total{route=\"r\",upstream=\"blue\",kind=\"abort\"}"
        ),
        None,
        "no series for an upstream the fault does not apply to"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_until_the_limit_changes() {
    let b = TestBackend::start("a").await;
    let limited = |extra: &str| {
        one_route(
            &b,
            &format!("    rate_limit: {{ requests_per_second: 0.01, burst: 2 }}\n{extra}"),
        )
    };
    let proxy = Proxy::start(&limited("")).await;
    let c = client();
    let statuses = |n: usize| {
        let (c, url) = (c.clone(), proxy.url("/"));
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(get(&c, &url).await.status.as_u16());
            }
            out
        }
    };
    assert_eq!(statuses(3).await, [200, 200, 429]);

    // Another part of the route changes: the empty bucket stays empty.
    let ev = proxy.rewrite(&limited("    timeout: 9s\n")).await;
    assert_eq!(ev.generation, 2);
    assert_eq!(
        statuses(1).await,
        [429],
        "a reload hands out no fresh burst"
    );

    let status = proxy.status().await;
    let rl = &status["routes"][0]["rate_limit"];
    assert_eq!(rl["limited"], 2, "{status}");
    assert_eq!(rl["key"], "route");

    // The limit itself changes: new buckets, full.
    let ev = proxy
        .rewrite(&one_route(
            &b,
            "    rate_limit: { requests_per_second: 0.01, burst: 3 }\n",
        ))
        .await;
    assert_eq!(ev.generation, 3);
    assert_eq!(statuses(4).await, [200, 200, 200, 429]);
    assert_eq!(
        sample(
            &proxy.metrics().await,
            "switchyard_rate_limited_total{route=\"r\"}"
        ),
        Some(3.0),
        "the counter keeps counting across the change"
    );
    proxy.shutdown().await;
}
