//! A real Prometheus (Debian's) on a loopback port scrapes a real switchyard under load with
//! deploy/prometheus's rules loaded; then every query the kit ships must return data: each
//! target of each dashboard panel (and its variables and annotations), each recording rule,
//! and the Flagger and Argo Rollouts templates' queries.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::proxy::TempDir;
use crate::support::tls::Ca;
use crate::support::*;
use crate::tools::{deploy_dir, documents, tool};

/// What the dashboard's variables and interval become in the queries run here.
const RATE_INTERVAL: &str = "10s";

/// A Prometheus server, stopped (by its PID) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates `rules` every second.
    async fn start(target: std::net::SocketAddr, rules: &std::path::Path) -> Prometheus {
        let dir = TempDir::new();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: switchyard\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (scripts/test.sh installs Debian's)");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let c = client();
        let ready = format!("{}/-/ready", p.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), c.get(ready.parse().unwrap())).await
                && r.status() == 200
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 60 s: {}",
                std::fs::read_to_string(p._dir.0.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(promql));
        let r = get(&client(), &url).await;
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{promql}: {e}: {}", r.text()));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Retries `promql` until it returns a series with a number (not NaN) in it; the result.
    async fn data(&self, promql: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let result = self.query(promql).await;
            if result.iter().any(|s| number(s).is_some_and(f64::is_finite)) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "no data for {promql}: {result:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn number(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard query as Grafana would send it with every variable at "All".
fn grafana(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$job", "switchyard")
        .replace("$route", ".*")
        .replace("$upstream", ".*")
}

/// `label_values(METRIC, LABEL)` (a Grafana variable) as a query with the same answer.
fn label_values(query: &str) -> String {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected variable query {query}"));
    let (metric, label) = inner.rsplit_once(',').unwrap();
    format!("count by ({}) ({})", label.trim(), grafana(metric.trim()))
}

/// Requests from `tasks` loops until stopped (bounded: 120 s).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    fn start(url: String, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|i| {
                let (stop, url) = (Arc::clone(&stop), url.clone());
                tokio::spawn(async move {
                    let c = client();
                    let started = Instant::now();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(120)
                    {
                        // Mostly 200s, some 404s: more than one code and class.
                        let path = if n % 10 == 3 { "/status/404" } else { "/shop" };
                        let user = format!("user-{i}-{}", n % 50);
                        let r =
                            get_with(&c, &format!("{url}{path}"), &[("x-user-id", &user)]).await;
                        assert!(r.status == 200 || r.status == 404, "{}", r.status);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for t in self.tasks {
            n += t.await.unwrap();
        }
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_query_returns_data_on_a_real_prometheus() {
    let started = Instant::now();
    let (s1, s2, canary, next) = (
        TestBackend::start("stable-1").await,
        TestBackend::start("stable-2").await,
        TestBackend::start("canary").await,
        TestBackend::start("next").await,
    );
    let dir = TempDir::new();
    let (cert, key) = Ca::new()
        .server(&["shop.example.test"])
        .write(&dir.0, "tls");
    // A route with retries, a rollout in progress, shadow traffic compared to a different
    // answer, and a TLS listener: every family the dashboard shows has series.
    let config = format!(
        "listeners:\n  - {{ name: public, bind: \"127.0.0.1:0\" }}\n  - {{ name: secure, bind: \"127.0.0.1:0\", tls: {{ cert: \"{}\", key: \"{}\" }} }}\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\n\
         upstreams:\n  stable: {{ backends: {} }}\n  canary: {{ backends: {} }}\n  next: {{ backends: {} }}\n\
         routes:\n  - name: shop\n    match: {{ path_prefix: / }}\n    sticky: {{ header: x-user-id }}\n\
         \x20   retries: {{ attempts: 2, on: [connect-failure, reset] }}\n\
         \x20   split: [{{ upstream: stable, weight: 100 }}, {{ upstream: canary, weight: 0 }}]\n\
         \x20   rollout: {{ strategy: canary, stable: stable, canary: canary, steps: [25, 50], step_interval: 1h }}\n\
         \x20   shadow: {{ upstream: next, percent: 50, compare: true }}\n",
        cert.display(),
        key.display(),
        addrs(&[&s1, &s2]),
        addrs(&[&canary]),
        addrs(&[&next]),
    );
    let proxy = Proxy::start(&config).await;
    let rules = deploy_dir()
        .join("prometheus")
        .join("switchyard.rules.yaml");
    let prom = Prometheus::start(proxy.admin, &rules).await;
    let load = Load::start(proxy.url(""), 3);

    // Enough scrapes under load for rates over the dashboard's interval, and one reload for
    // the dashboard's reload annotation.
    prom.data(
        "count_over_time(switchyard_requests_total{route=\"shop\",upstream=\"canary\",code_class=\"2xx\"}[1m]) > 5 and rate(switchyard_requests_total{upstream=\"canary\",code_class=\"2xx\"}[10s]) > 0",
        Duration::from_secs(60),
    )
    .await;
    let ev = proxy.rewrite(&format!("{config}# reloaded\n")).await;
    assert_eq!(ev.rejected, 0);

    let wait = Duration::from_secs(30);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana").join("switchyard.json")).unwrap(),
    )
    .unwrap();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().unwrap();
            prom.data(&label_values(q), wait).await;
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        prom.data(&grafana(a["expr"].as_str().unwrap()), wait).await;
    }
    let mut panels = 0;
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            prom.data(&grafana(t["expr"].as_str().unwrap()), wait).await;
            queries += 1;
        }
        panels += 1;
    }

    let rule_file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let mut recorded = 0;
    for group in rule_file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(name) = rule["record"].as_str() {
                prom.data(name, wait).await;
                recorded += 1;
            }
        }
    }

    // The canary has traffic at its first step's 25 %; the templates ask about it.
    let read = |p: &str| documents(&std::fs::read_to_string(deploy_dir().join(p)).unwrap());
    let flagger = read("flagger/metric-templates.yaml");
    for t in &flagger {
        let q = t["spec"]["query"].as_str().unwrap();
        let q = q
            .replace("{{ variables.route }}", "shop")
            .replace("{{ variables.upstream }}", "canary")
            .replace("{{ interval }}", "30s");
        assert!(!q.contains("{{"), "a Flagger variable left in {q}");
        let result = prom.data(&q, wait).await;
        assert_eq!(
            result.len(),
            1,
            "{}: one value for Flagger: {result:?}",
            t["metadata"]["name"]
        );
    }
    let argo = read("argo-rollouts/analysis-template.yaml");
    let mut argo_queries = 0;
    for m in argo[0]["spec"]["metrics"].as_array().unwrap() {
        let q = m["provider"]["prometheus"]["query"].as_str().unwrap();
        let q = q
            .replace("{{args.route}}", "shop")
            .replace("{{args.upstream}}", "canary");
        assert!(!q.contains("{{"), "an Argo argument left in {q}");
        let result = prom.data(&q, wait).await;
        assert_eq!(
            result.len(),
            1,
            "{}: result[0] and nothing else: {result:?}",
            m["name"]
        );
        argo_queries += 1;
    }

    let requests = load.finish().await;
    println!(
        "real Prometheus: {panels} dashboard panels ({queries} queries), {recorded} recording rules, {} Flagger and {argo_queries} Argo queries returned data; {requests} requests in {:.1} s",
        flagger.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(panels >= 20 && recorded >= 8 && flagger.len() >= 2 && argo_queries >= 2);
    // Everything the shadow compared differed (another backend's name in the body).
    assert!(next.count() > 0 && canary.count() > 0);
}
