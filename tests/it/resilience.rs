//! Breakers, health checks, retries and their budget, with backends that really die.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::proxy::sample;
use crate::support::*;

/// `n` loops sending GET / one after another until `stop`; every status they saw.
fn traffic(url: String, n: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..n)
        .map(|_| {
            let (url, stop) = (url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let c = client();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(get(&c, &url).await.status.as_u16());
                }
                seen
            })
        })
        .collect()
}

async fn collect(loops: Vec<tokio::task::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    let mut all = Vec::new();
    for l in loops {
        all.extend(l.await.unwrap());
    }
    all
}

fn pool(name: &str, backends: &[&TestBackend], extra: &str) -> String {
    format!("  {name}:\n    backends: {}\n{extra}", addrs(backends))
}

async fn wait_traffic(b: &TestBackend, n: usize) {
    for _ in 0..2000 {
        if b.traffic() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{} never saw {n} requests", b.name);
}

async fn killed_backend(retries: &str) -> (Vec<u16>, Proxy, [TestBackend; 3]) {
    let bs = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let breaker = "    circuit_breaker: { consecutive_failures: 3, open_for: 300ms }\n";
    let config = format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n{retries}",
        pool("app", &[&bs[0], &bs[1], &bs[2]], breaker)
    );
    let proxy = Proxy::start(&config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops = traffic(proxy.url("/"), 4, Arc::clone(&stop));
    wait_traffic(&bs[1], 30).await;
    bs[1].kill();
    proxy
        .wait_backend("app", bs[1].addr, "open", |b| {
            b["breaker"]["state"] == "open"
        })
        .await;
    let after = bs[0].traffic() + 100;
    wait_traffic(&bs[0], after).await;
    stop.store(true, Ordering::Relaxed);
    (collect(loops).await, proxy, bs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_at_most_its_requests_in_flight() {
    let (statuses, proxy, bs) = killed_backend("").await;
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    // Four clients: at most one request each was in flight at the moment of death. Requests
    // after it that met a refused connection went to another backend.
    assert!(
        failed <= 4,
        "{failed} of {} requests failed",
        statuses.len()
    );
    let b = proxy.backend_status("app", bs[1].addr).await;
    assert!(
        b["outcomes"]["connect_failure"].as_u64().unwrap()
            + b["outcomes"]["reset"].as_u64().unwrap()
            >= 3
    );

    // The backend comes back on the same port: half-open probes close the breaker.
    let back = TestBackend::start_on("b-again", bs[1].addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops = traffic(proxy.url("/"), 2, Arc::clone(&stop));
    proxy
        .wait_backend("app", bs[1].addr, "closed", |b| {
            b["breaker"]["state"] == "closed"
        })
        .await;
    wait_traffic(&back, 10).await;
    stop.store(true, Ordering::Relaxed);
    assert!(collect(loops).await.iter().all(|&s| s == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_a_killed_backend_costs_nothing() {
    let (statuses, _proxy, _bs) = killed_backend("    retries: { attempts: 2 }\n").await;
    let failed: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_canary_sends_its_share_to_stable() {
    let (stable, canary) = (
        TestBackend::start("stable").await,
        TestBackend::start("canary").await,
    );
    let config = format!(
        "{HEAD}upstreams:\n{}{}routes:\n  - name: r\n    split: [{{ upstream: stable, weight: 90 }}, {{ upstream: canary, weight: 10 }}]\n",
        pool("stable", &[&stable], ""),
        pool("canary", &[&canary], "")
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    for _ in 0..100 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    assert_eq!(canary.traffic(), 10);
    canary.kill();
    for _ in 0..200 {
        assert_eq!(
            get(&c, &proxy.url("/")).await.status,
            200,
            "every request is answered"
        );
    }
    assert_eq!(canary.traffic(), 10);
    assert_eq!(stable.traffic(), 290);
    let s = proxy.status().await;
    let split = &s["routes"][0]["split"];
    assert_eq!(split[1]["upstream"], "canary");
    assert!(split[1]["rerouted_away"].as_u64().unwrap() >= 15, "{split}");
    assert_eq!(split[1]["rerouted_away"], split[0]["rerouted_in"]);
    let b = proxy.backend_status("canary", canary.addr).await;
    assert_eq!(b["breaker"]["state"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_60_percent_trips_on_the_failure_rate() {
    let (good, flaky) = (
        TestBackend::start("good").await,
        TestBackend::start("flaky").await,
    );
    flaky.set_failing(60);
    let breaker = "    circuit_breaker: { consecutive_failures: 0, failure_rate: 0.5, min_requests: 20, window: 30s, open_for: 60s }\n";
    let config = format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        pool("app", &[&good, &flaky], breaker)
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    let mut errors = 0;
    for _ in 0..300 {
        errors += usize::from(get(&c, &proxy.url("/")).await.status == 500);
    }
    let b = proxy.backend_status("app", flaky.addr).await;
    assert_eq!(b["breaker"]["state"], "open", "{b}");
    // It opened once the window held 20 requests, not after 300/2.
    assert!(
        flaky.traffic() <= 25,
        "flaky saw {} requests",
        flaky.traffic()
    );
    assert_eq!(errors, flaky.traffic() * 60 / 100);
    assert_eq!(good.traffic() + flaky.traffic(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_a_504_counted_as_a_timeout() {
    let slow = TestBackend::start("slow").await;
    let config = format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    timeout: 200ms\n    split: [{{ upstream: app, weight: 1 }}]\n",
        pool("app", &[&slow], "")
    );
    let proxy = Proxy::start(&config).await;
    let r = get(&client(), &proxy.url("/sleep/5000")).await;
    assert_eq!(r.status, 504);
    let m = proxy.metrics().await;
    let series = format!(
        "switchyard_upstream_outcomes_total{{upstream=\"app\",backend=\"{}\",outcome=\"timeout\"}}",
        slow.addr
    );
    assert_eq!(sample(&m, &series), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_when_every_backend_fails() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    a.set_failing(100);
    b.set_failing(100);
    let config = format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    retries: {{ attempts: 2, on: [5xx], budget_percent: 20, min_per_second: 0 }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
        pool(
            "app",
            &[&a, &b],
            "    circuit_breaker: { enabled: false }\n"
        )
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    for _ in 0..100 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 500);
    }
    // Unbudgeted, 100 requests with 2 retries each would be 300 tries.
    let tries = a.traffic() + b.traffic();
    assert!(
        (115..=120).contains(&tries),
        "{tries} tries for 100 requests"
    );
    let m = proxy.metrics().await;
    let denied = sample(
        &m,
        "switchyard_retries_total{route=\"r\",upstream=\"app\",result=\"denied\"}",
    );
    assert!(denied.unwrap_or(0.0) >= 50.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_stays_open_across_a_reload_that_keeps_its_backend() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let breaker = "    circuit_breaker: { consecutive_failures: 2, open_for: 60s }\n";
    let config = |extra_route: &str| {
        format!(
            "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n{extra_route}",
            pool("app", &[&a, &b], breaker)
        )
    };
    let proxy = Proxy::start(&config("")).await;
    b.kill();
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    proxy
        .wait_backend("app", b.addr, "open", |s| s["breaker"]["state"] == "open")
        .await;
    let ev = proxy
        .rewrite(&config("  - name: other\n    match: { path_prefix: /other }\n    split: [{ upstream: app, weight: 1 }]\n"))
        .await;
    assert_eq!((ev.generation, ev.rejected), (2, 0));
    let s = proxy.backend_status("app", b.addr).await;
    assert_eq!(s["breaker"]["state"], "open", "{s}");
    assert!(s["breaker"]["reopens_in_ms"].as_u64().unwrap() > 30_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_backend_out_and_put_it_back() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let check = "    health_check: { path: /healthz, interval: 50ms, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }\n";
    let config = format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        pool("app", &[&a, &b], check)
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    b.set_healthy(false);
    proxy
        .wait_backend("app", b.addr, "unhealthy", |s| s["healthy"] == false)
        .await;
    let before = b.traffic();
    for _ in 0..50 {
        assert_eq!(get(&c, &proxy.url("/")).await.backend(), "a");
    }
    assert_eq!(b.traffic(), before, "an unhealthy backend gets no traffic");

    b.set_healthy(true);
    proxy
        .wait_backend("app", b.addr, "healthy", |s| s["healthy"] == true)
        .await;
    for _ in 0..50 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    assert_eq!(b.traffic(), before + 25, "back in rotation");
    assert!(b.health_checks() >= 4);
    let m = proxy.metrics().await;
    let series = format!(
        "switchyard_backend_healthy{{upstream=\"app\",backend=\"{}\"}}",
        b.addr
    );
    assert_eq!(sample(&m, &series), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_flaky_backend_is_retried_when_nothing_else_is_left() {
    let flaky = TestBackend::start("flaky").await;
    flaky.set_failing(50);
    let config = format!(
        "{HEAD}upstreams:\n{}routes:\n  - name: r\n    retries: {{ attempts: 1, on: [5xx] }}\n    split: [{{ upstream: app, weight: 1 }}]\n",
        pool(
            "app",
            &[&flaky],
            "    circuit_breaker: { enabled: false }\n"
        )
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    // Tries go ok, fail, ok, fail...: the first request needs one, each later one two.
    assert_eq!(
        flaky.traffic(),
        1 + 19 * 2,
        "every failed try was tried again"
    );
}
