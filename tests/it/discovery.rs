//! DNS discovery against a real DNS server (dnsmasq, see `support::dns`) and real pods on
//! 127.0.0.2, 127.0.0.3, ...: pods coming and going under load, a dead pod's breaker, empty
//! answers and a dead DNS server, start-up without an answer, health-gated new pods, TTLs,
//! and state that survives re-resolution, reloads and rollouts. Every wait is bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::support::dns::{DeadServer, Dns, free_port, ip, pods};
use crate::support::proxy::sample;
use crate::support::*;

const NAME: &str = "app.test";

/// A proxy with upstream `app` discovering `app.test:PORT` at `dns`, route `r` to it.
fn config(dns: &Dns, port: u16, extra: &str) -> String {
    config_at(&dns.addr.to_string(), port, "1s", extra)
}

fn config_at(resolver: &str, port: u16, refresh: &str, extra: &str) -> String {
    format!(
        "{HEAD}resolver: \"{resolver}\"\nupstreams:\n  app:\n    discover: {{ dns: \"{NAME}:{port}\", refresh: {refresh} }}\n{extra}\
         routes:\n  - {{ name: r, split: [{{ upstream: app, weight: 1 }}] }}\n"
    )
}

fn records(ips: &[String]) -> Vec<(&str, &str)> {
    ips.iter().map(|i| (NAME, i.as_str())).collect()
}

/// The pods of `app` in `/status`, sorted.
async fn in_force(p: &Proxy) -> Vec<String> {
    let s = p.status().await;
    let app = s["upstreams"]
        .as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == "app"))
        .cloned()
        .unwrap_or_default();
    let mut v: Vec<String> = app["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .filter_map(|b| b["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn addresses(port: u16, ips: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = ips.iter().map(|i| format!("{}:{port}", ip(*i))).collect();
    v.sort();
    v
}

/// Polls `/status` until the pods in force are `want` (bounded: 20 s).
async fn wait_in_force(p: &Proxy, want: &[String]) {
    for _ in 0..2000 {
        if in_force(p).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backends never became {want:?}: {:?}", in_force(p).await);
}

/// Polls until `cond` holds (bounded: 20 s).
async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..2000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn lookups(m: &str, result: &str) -> f64 {
    sample(
        m,
        &format!("switchyard_dns_lookups_total{{upstream=\"app\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// `workers` clients sending GET / back to back until stopped; what each answer was
/// (status, or 0 for a failed exchange) by pod name.
struct Clients {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
}

impl Clients {
    fn start(url: String, workers: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, url) = (Arc::clone(&stop), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut answers = Vec::new();
                    // Bounded even if nobody stops it.
                    for _ in 0..200_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let req = http::Request::get(&url).body(Full::<Bytes>::default());
                        let answer = match c.request(req.unwrap()).await {
                            Ok(resp) => {
                                let pod = resp.headers().get("x-backend").cloned();
                                let done = resp.into_body().collect().await.is_ok();
                                let pod = pod.and_then(|v| v.to_str().ok().map(str::to_owned));
                                (if done { 200 } else { 0 }, pod.unwrap_or_default())
                            }
                            Err(_) => (0, String::new()),
                        };
                        answers.push(answer);
                    }
                    answers
                })
            })
            .collect();
        Clients { stop, tasks }
    }

    /// Stops; every answer, and how many of them each pod gave.
    async fn stop(self) -> (Vec<(u16, String)>, HashMap<String, usize>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        let mut by_pod = HashMap::new();
        for (_, pod) in &all {
            *by_pod.entry(pod.clone()).or_default() += 1;
        }
        (all, by_pod)
    }
}

fn failures(answers: &[(u16, String)]) -> usize {
    answers.iter().filter(|(s, _)| *s != 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_added_and_removed_under_load_fail_no_request() {
    let (port, pods) = pods(3).await;
    let (two, three, four) = (ip(2), ip(3), ip(4));
    let mut dns = Dns::start(&records(&[two.clone(), three.clone()])).await;
    let p = Proxy::start(&config(&dns, port, "")).await;
    assert_eq!(
        in_force(&p).await,
        addresses(port, &[2, 3]),
        "start-up waits for the first answer"
    );

    const WORKERS: usize = 4;
    let load = Clients::start(p.url("/"), WORKERS);
    // A pod comes: it takes traffic.
    dns.set(&records(&[two.clone(), three.clone(), four.clone()]))
        .await;
    wait_in_force(&p, &addresses(port, &[2, 3, 4])).await;
    wait_until("pod-4 takes traffic", async || pods[2].traffic() >= 20).await;

    // A pod goes: once the new set is in force, only requests already under way can reach it.
    dns.set(&records(&[three.clone(), four.clone()])).await;
    wait_in_force(&p, &addresses(port, &[3, 4])).await;
    let at_removal = pods[0].traffic();
    let (three_then, four_then) = (pods[1].traffic(), pods[2].traffic());
    wait_until("the others serve 200 more", async || {
        pods[1].traffic() + pods[2].traffic() >= three_then + four_then + 200
    })
    .await;
    let (answers, by_pod) = load.stop().await;

    assert_eq!(failures(&answers), 0, "failed requests: {by_pod:?}");
    assert!(
        pods[0].traffic() - at_removal <= WORKERS,
        "pod-2 got {} requests after its removal was in force (at most {WORKERS} were under way)",
        pods[0].traffic() - at_removal
    );
    assert!(by_pod["pod-2"] > 0 && by_pod["pod-3"] > 0 && by_pod["pod-4"] > 0);
    let m = p.metrics().await;
    assert_eq!(
        sample(&m, "switchyard_discovered_backends{upstream=\"app\"}"),
        Some(2.0)
    );
    assert!(lookups(&m, "ok") >= 3.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pod_finishes_the_requests_it_has_and_gets_no_more() {
    let (port, pods) = pods(2).await;
    let mut dns = Dns::start(&records(&[ip(2)])).await;
    let p = Proxy::start(&config(&dns, port, "")).await;
    let held = tokio::spawn({
        let url = p.url("/hold/drain");
        async move { get(&client(), &url).await }
    });
    pods[0].wait_for_path("/hold/drain").await;

    dns.set(&records(&[ip(3)])).await;
    wait_in_force(&p, &addresses(port, &[3])).await;
    let st = p.status().await;
    let draining = &st["upstreams"][0]["discovery"]["draining"];
    assert_eq!(draining[0]["address"], format!("{}:{port}", ip(2)), "{st}");
    assert_eq!(draining[0]["in_flight"], 1);
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &p.url("/")).await.backend(), "pod-3");
    }

    pods[0].release("drain");
    let r = held.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "pod-2 held drain\n"));
    let st = p.status().await;
    assert_eq!(
        st["upstreams"][0]["discovery"]["draining"],
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pods_breaker_opens_while_the_others_serve_and_survives_re_resolution() {
    let (port, pods) = pods(4).await;
    let ips: Vec<String> = (2..5).map(ip).collect();
    let mut dns = Dns::start(&records(&ips)).await;
    let p = Proxy::start(&config(
        &dns,
        port,
        "    circuit_breaker: { consecutive_failures: 3, open_for: 5m }\n",
    ))
    .await;
    // The pod dies; DNS still lists it (as before its endpoint is removed).
    pods[1].kill();
    let dead = format!("{}:{port}", ip(3)).parse().unwrap();
    let c = client();
    for _ in 0..60 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!(r.status, 200, "a connect failure is tried on another pod");
        assert_ne!(r.backend(), "pod-3");
    }
    let before = p
        .wait_backend("app", dead, "open", |b| b["breaker"]["state"] == "open")
        .await;
    let failures_before = before["outcomes"]["connect_failure"].as_u64().unwrap();
    assert!(failures_before >= 3);

    // A new pod: the set is re-resolved; the dead pod's state (an open breaker, its counts)
    // is kept, not started over.
    let mut more = ips.clone();
    more.push(ip(5));
    dns.set(&records(&more)).await;
    wait_in_force(&p, &addresses(port, &[2, 3, 4, 5])).await;
    let after = p.backend_status("app", dead).await;
    assert_eq!(after["breaker"]["state"], "open", "{after}");
    assert!(after["outcomes"]["connect_failure"].as_u64().unwrap() >= failures_before);
    for _ in 0..40 {
        assert_eq!(get(&c, &p.url("/")).await.status, 200);
    }
    assert!(pods[3].traffic() > 0, "the new pod serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_and_a_dead_dns_server_keep_the_last_set() {
    let (port, pods) = pods(2).await;
    let mut dns = Dns::start(&records(&[ip(2), ip(3)])).await;
    let p = Proxy::start(&config(&dns, port, "")).await;
    let both = addresses(port, &[2, 3]);
    assert_eq!(in_force(&p).await, both);
    let c = client();
    let serves_both = async || {
        for _ in 0..20 {
            assert_eq!(get(&c, &p.url("/")).await.status, 200);
        }
        assert_eq!(in_force(&p).await, both);
    };

    // The name loses every record: NXDOMAIN. Counted, logged, and the pods stay.
    let empty_before = lookups(&p.metrics().await, "empty");
    dns.set(&[("other.test", "127.0.0.9")]).await;
    p.wait_metric(
        "switchyard_dns_lookups_total{upstream=\"app\",result=\"empty\"}",
        empty_before + 1.0,
    )
    .await;
    let (two, three) = (pods[0].traffic(), pods[1].traffic());
    serves_both().await;
    assert!(pods[0].traffic() > two && pods[1].traffic() > three);
    let st = p.status().await;
    let discovery = &st["upstreams"][0]["discovery"];
    assert_eq!(discovery["last_lookup"]["result"], "empty", "{discovery}");
    assert_eq!(discovery["backends"], 2);

    // The DNS server dies: lookups get no answer. Still the same pods.
    dns.kill();
    p.wait_metric(
        "switchyard_dns_lookups_total{upstream=\"app\",result=\"error\"}",
        1.0,
    )
    .await;
    serves_both().await;
    let ready = get(&c, &p.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "a serving replica stays ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_first_answer_the_route_answers_503_and_readyz_waits() {
    let (port, pods) = pods(1).await;
    // Nothing answers on this port yet.
    let dead = DeadServer::new();
    let dns_port = dead.port;
    let p = Proxy::start(&config_at(&format!("127.0.0.1:{dns_port}"), port, "2s", "")).await;
    let c = client();
    let r = get(&c, &p.url("/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-switchyard-error"], "no-backend");
    assert!(r.text().contains("has no backends"), "{}", r.text());
    assert_eq!(get(&c, &p.admin_url("/readyz")).await.status, 503);

    // A server comes up that knows no such name: an answer (none), so the replica is ready;
    // the route still has nothing to send to.
    drop(dead);
    let mut dns = Dns::start_on(dns_port, &[("other.test", "127.0.0.9")], 0)
        .await
        .expect("dnsmasq on the resolver's port");
    wait_until("ready after an answer", async || {
        get(&c, &p.admin_url("/readyz")).await.status == 200
    })
    .await;
    assert_eq!(get(&c, &p.url("/")).await.status, 503);

    // The pod appears.
    dns.set(&records(&[ip(2)])).await;
    wait_in_force(&p, &addresses(port, &[2])).await;
    assert_eq!(get(&c, &p.url("/")).await.status, 200);
    assert!(pods[0].traffic() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_takes_traffic_only_after_its_first_passing_check() {
    let (port, pods) = pods(4).await;
    for pod in &pods[1..] {
        pod.set_healthy(false);
    }
    let mut dns = Dns::start(&records(&[ip(2)])).await;
    let p = Proxy::start(&config(
        &dns,
        port,
        "    health_check: { path: /healthz, interval: 100ms, healthy_threshold: 3 }\n",
    ))
    .await;
    // Three pods appear that fail their checks. Three of four out would be panic mode for
    // unhealthy backends; pods never checked healthy are not in play at all.
    let all: Vec<String> = (2..6).map(ip).collect();
    dns.set(&records(&all)).await;
    wait_in_force(&p, &addresses(port, &[2, 3, 4, 5])).await;
    for pod in &pods[1..] {
        wait_until("the new pod is checked", async || pod.health_checks() >= 2).await;
    }
    let c = client();
    for _ in 0..40 {
        let r = get(&c, &p.url("/")).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "pod-2"));
    }
    assert!(pods[1..].iter().all(|pod| pod.traffic() == 0));

    // They pass: each comes in on its first pass, and takes traffic.
    for pod in &pods[1..] {
        pod.set_healthy(true);
    }
    for pod in &pods[1..] {
        let addr = pod.addr;
        p.wait_backend("app", addr, "healthy", |b| b["healthy"] == true)
            .await;
    }
    for _ in 0..80 {
        assert_eq!(get(&c, &p.url("/")).await.status, 200);
    }
    assert!(pods.iter().all(|pod| pod.traffic() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_is_looked_up_again_before_refresh() {
    let (port, _pods) = pods(2).await;
    let mut dns = None;
    for _ in 0..5 {
        dns = Dns::start_on(free_port(), &records(&[ip(2)]), 1).await;
        if dns.is_some() {
            break;
        }
    }
    let mut dns = dns.expect("dnsmasq started");
    // refresh 1h: only the records' 1 s TTL can bring the change in within the wait.
    let p = Proxy::start(&config_at(&dns.addr.to_string(), port, "1h", "")).await;
    let st = p.status().await;
    assert_eq!(
        st["upstreams"][0]["discovery"]["last_lookup"]["ttl_seconds"],
        1
    );
    dns.set(&records(&[ip(2), ip(3)])).await;
    wait_in_force(&p, &addresses(port, &[2, 3])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_discovered_set_and_a_discovery_change_keeps_the_rollout() {
    let (port, pods) = pods(3).await;
    let stable = TestBackend::start("stable").await;
    let mut dns = Dns::start(&records(&[ip(2)])).await;
    let yaml = |connect_timeout: &str| {
        format!(
            "{HEAD}resolver: \"{}\"\nupstreams:\n  stable: {{ backends: {} }}\n  \
             app:\n    discover: {{ dns: \"{NAME}:{port}\", refresh: 1s }}\n    connect_timeout: {connect_timeout}\n\
             routes:\n  - name: r\n    override_header: x-switchyard-upstream\n    split: [{{ upstream: stable, weight: 100 }}, {{ upstream: app, weight: 0 }}]\n    \
             rollout: {{ strategy: canary, stable: stable, canary: app, steps: [10, 50, 100], step_interval: 1h }}\n",
            dns.addr,
            addrs(&[&stable]),
        )
    };
    let p = Proxy::start(&yaml("1s")).await;
    let live = async |p: &Proxy| -> (Value, Value) {
        let s = p.status().await;
        let split = &s["routes"][0]["split"];
        (
            json_pair(&split[0]["weight"], &split[1]["weight"]),
            s["generation"].clone(),
        )
    };
    wait_until("the rollout sets its first step's weights", async || {
        live(&p).await.0 == json_pair(&90.into(), &10.into())
    })
    .await;
    let app = |i: u8| format!("{}:{port}", ip(i)).parse().unwrap();
    let c = client();
    for _ in 0..10 {
        let r = get_with(&c, &p.url("/"), &[("x-switchyard-upstream", "app")]).await;
        assert_eq!(r.backend(), "pod-2");
    }

    // A reload that changes the upstream (not its discovery): the pods stay, with their state.
    let ev = p.rewrite(&yaml("2s")).await;
    assert_eq!(ev.generation, 2);
    assert_eq!(in_force(&p).await, addresses(port, &[2]), "no empty window");
    let after = p.backend_status("app", app(2)).await;
    assert_eq!(
        after["outcomes"]["success"], 10,
        "the pod's counts carry over: {after}"
    );

    // A discovery change: same generation, same rollout weights.
    let (weights, generation) = live(&p).await;
    dns.set(&records(&[ip(2), ip(3), ip(4)])).await;
    wait_in_force(&p, &addresses(port, &[2, 3, 4])).await;
    assert_eq!(live(&p).await, (weights, generation));
    let r = get(&c, &p.admin_url("/rollouts/r")).await;
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["step"].as_u64()),
        (Some("progressing"), Some(0)),
        "{v}"
    );
    drop(pods);
}

fn json_pair(a: &Value, b: &Value) -> Value {
    Value::Array(vec![a.clone(), b.clone()])
}
