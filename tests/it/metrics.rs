//! `/metrics` read by the reference parser (Python's prometheus_client, installed by
//! scripts/test.sh), its values checked against the traffic sent.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value, family.type])
print(json.dumps(out))
"#;

/// Every sample as (name, labels, value, family type), or the parser's complaint.
fn parse(text: &str) -> Vec<(String, Value, f64, String)> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, Value, f64, String)> = serde_json::from_slice(&out.stdout).unwrap();
    rows
}

/// `promtool check metrics` (Prometheus' own linter, installed by scripts/test.sh) finds
/// nothing to say.
fn promtool_check(text: &str) {
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs Debian's prometheus)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value(rows: &[(String, Value, f64, String)], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = rows
        .iter()
        .filter(|(n, l, _, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v, _)| *v)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_parser_reads_metrics_that_match_the_traffic() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "{HEAD}upstreams:\n  blue: {{ backends: {} }}\n  green: {{ backends: {} }}\n  dead: {{ backends: [\"{closed}\"] }}\n\
         routes:\n  - name: shop\n    match: {{ host: shop }}\n    split: [{{ upstream: blue, weight: 3 }}, {{ upstream: green, weight: 1 }}]\n\
         \x20 - name: dead\n    match: {{ path_prefix: /dead }}\n    split: [{{ upstream: dead, weight: 1 }}]\n",
        addrs(&[&blue]),
        addrs(&[&green])
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    let shop = [("host", "shop")];
    for _ in 0..40 {
        assert_eq!(get_with(&c, &proxy.url("/"), &shop).await.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(
            get_with(&c, &proxy.url("/status/404"), &shop).await.status,
            404
        );
    }
    assert_eq!(get(&c, &proxy.url("/dead")).await.status, 502);
    assert_eq!(get(&c, &proxy.url("/nowhere")).await.status, 404);

    let text = proxy.metrics().await;
    promtool_check(&text);
    let rows = parse(&text);
    let blue_addr = blue.addr.to_string();
    let (b, g) = (blue_addr.as_str(), &*green.addr.to_string());

    // 44 answers on shop split 3:1: 33 from blue (30 OK + 3 of the 404s), 11 from green.
    assert_eq!(
        value(
            &rows,
            "switchyard_requests_total",
            &[("route", "shop"), ("backend", b), ("code_class", "2xx")]
        ),
        30.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_requests_total",
            &[("route", "shop"), ("backend", b), ("code_class", "4xx")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_requests_total",
            &[("route", "shop"), ("backend", g), ("code_class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_requests_total",
            &[
                ("route", "dead"),
                ("backend", &closed.to_string()),
                ("code_class", "5xx")
            ]
        ),
        1.0
    );
    assert_eq!(value(&rows, "switchyard_unrouted_requests_total", &[]), 1.0);

    // Histograms: one observation per request answered (route) and per try (backend).
    assert_eq!(
        value(
            &rows,
            "switchyard_request_duration_seconds_count",
            &[("route", "shop"), ("upstream", "blue")]
        ),
        33.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_request_duration_seconds_bucket",
            &[("route", "shop"), ("upstream", "blue"), ("le", "+Inf")]
        ),
        33.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_upstream_latency_seconds_count",
            &[("upstream", "green"), ("backend", g)]
        ),
        11.0
    );
    let buckets: Vec<f64> = rows
        .iter()
        .filter(|(n, l, _, _)| {
            n == "switchyard_upstream_latency_seconds_bucket" && l["backend"] == b
        })
        .map(|(_, _, v, _)| *v)
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets: {buckets:?}"
    );
    assert!(
        value(
            &rows,
            "switchyard_upstream_latency_seconds_sum",
            &[("backend", b)]
        ) > 0.0
    );

    assert_eq!(
        value(
            &rows,
            "switchyard_upstream_outcomes_total",
            &[("backend", b), ("outcome", "success")]
        ),
        33.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_upstream_outcomes_total",
            &[("upstream", "dead"), ("outcome", "connect_failure")]
        ),
        1.0
    );
    // A request answered by switchyard itself still has a duration on its route.
    assert_eq!(
        value(
            &rows,
            "switchyard_request_duration_seconds_count",
            &[("route", "dead"), ("upstream", "dead")]
        ),
        1.0
    );
    assert_eq!(
        value(&rows, "switchyard_breaker_state", &[("backend", b)]),
        0.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_route_weight",
            &[("route", "shop"), ("upstream", "blue")]
        ),
        3.0
    );
    assert_eq!(value(&rows, "switchyard_config_generation", &[]), 1.0);
    let family = rows
        .iter()
        .find(|(n, _, _, _)| n == "switchyard_request_duration_seconds_count")
        .map(|(_, _, _, t)| t.clone());
    assert_eq!(family.as_deref(), Some("histogram"));
}

/// The series a route's queries need exist before its first request, at 0 (so an error ratio
/// is 0, not "no data"); build and process families are there; a reload that removes a route,
/// an upstream of a split or a backend takes their series with it; a rejected reload shows in
/// the reload gauges while the last success time stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_exists_from_the_start_and_leaves_with_what_a_reload_removed() {
    let (blue, green, green2) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
        TestBackend::start("green2").await,
    );
    let config = |green_backends: &str, routes: &str| {
        format!(
            "{HEAD}upstreams:\n  blue: {{ backends: {} }}\n  green: {{ backends: {green_backends} }}\nroutes:\n{routes}",
            addrs(&[&blue]),
        )
    };
    let shop = "  - name: shop\n    split: [{ upstream: blue, weight: 1 }, { upstream: green, weight: 0 }]\n    \
                rollout: { strategy: canary, stable: blue, canary: green, steps: [50], step_interval: 1h }\n";
    let idle = "  - name: idle\n    match: { path_prefix: /idle }\n    split: [{ upstream: green, weight: 1 }]\n";
    let first = config(&addrs(&[&green, &green2]), &format!("{idle}{shop}"));
    let proxy = Proxy::start(&first).await;
    let (b, g, g2) = (
        blue.addr.to_string(),
        green.addr.to_string(),
        green2.addr.to_string(),
    );

    let text = proxy.metrics().await;
    promtool_check(&text);
    let rows = parse(&text);
    let requests = |rows: &[(String, Value, f64, String)], route: &str, upstream: &str| {
        rows.iter()
            .filter(|(n, l, _, _)| {
                n == "switchyard_requests_total" && l["route"] == route && l["upstream"] == upstream
            })
            .map(|(_, l, v, _)| {
                (
                    l["backend"].as_str().unwrap_or("").to_owned(),
                    l["code_class"].as_str().unwrap_or("").to_owned(),
                    *v,
                )
            })
            .collect::<Vec<_>>()
    };
    // Every backend of the upstream and "" (answers without a backend), each class, at 0.
    let mut want = Vec::new();
    for backend in [&*g, &*g2, ""] {
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            want.push((backend.to_owned(), class.to_owned(), 0.0));
        }
    }
    assert_eq!(requests(&rows, "idle", "green"), want);
    assert_eq!(requests(&rows, "shop", "green"), want);
    assert_eq!(requests(&rows, "shop", "blue").len(), 10);
    assert!(
        !rows
            .iter()
            .any(|(n, _, _, _)| n == "switchyard_responses_total"),
        "exact codes appear with their first response"
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value(&rows, "process_cpu_seconds_total", &[]) >= 0.0);
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&rows, family, &[]) > 0.0, "{family}");
    }
    assert_eq!(
        value(&rows, "switchyard_config_last_reload_successful", &[]),
        1.0
    );
    let loaded_at = value(
        &rows,
        "switchyard_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(loaded_at <= now && loaded_at > now - 600.0, "{loaded_at}");
    let info = rows
        .iter()
        .find(|(n, _, _, _)| n == "switchyard_rollout_info")
        .map(|(_, l, v, _)| (l.clone(), *v));
    assert_eq!(
        info,
        Some((
            serde_json::json!({ "route": "shop", "strategy": "canary", "stable": "blue", "canary": "green" }),
            1.0
        ))
    );
    let states: Vec<(String, f64)> = rows
        .iter()
        .filter(|(n, l, _, _)| n == "switchyard_rollout_state" && l["route"] == "shop")
        .map(|(_, l, v, _)| (l["state"].as_str().unwrap_or("").to_owned(), *v))
        .collect();
    assert_eq!(
        states.len(),
        switchyard::rollout::State::NAMES.len(),
        "{states:?}"
    );
    assert_eq!(
        states.iter().map(|(_, v)| v).sum::<f64>(),
        1.0,
        "{states:?}"
    );

    let c = client();
    assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    assert_eq!(get(&c, &proxy.url("/status/503")).await.status, 503);
    assert_eq!(get(&c, &proxy.url("/status/299")).await.status, 299);
    // The rollout may have sent them to either upstream: sum over the route.
    let shop_sum = |rows: &[(String, Value, f64, String)], name: &str, label: (&str, &str)| {
        rows.iter()
            .filter(|(n, l, _, _)| n == name && l["route"] == "shop" && l[label.0] == label.1)
            .map(|(_, _, v, _)| v)
            .sum::<f64>()
    };
    let rows = parse(&proxy.metrics().await);
    let code = |code: &str| shop_sum(&rows, "switchyard_responses_total", ("code", code));
    assert_eq!((code("200"), code("503"), code("2xx")), (1.0, 1.0, 1.0));
    let ok = shop_sum(&rows, "switchyard_requests_total", ("code_class", "2xx"));
    assert_eq!(ok, 2.0);

    // Rejected: the old config serves on, the gauges say so.
    let ev = proxy.rewrite("routes: [").await;
    assert_eq!(ev.rejected, 1);
    let rows = parse(&proxy.metrics().await);
    assert_eq!(
        value(&rows, "switchyard_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(
        value(
            &rows,
            "switchyard_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        loaded_at
    );

    // The idle route, the rollout, green's second backend and the shop's green go.
    let second = config(
        &addrs(&[&green]),
        "  - name: shop\n    split: [{ upstream: blue, weight: 1 }]\n",
    );
    let ev = proxy.rewrite(&second).await;
    assert_eq!((ev.generation, ev.rejected), (2, 1));
    let text = proxy.metrics().await;
    promtool_check(&text);
    let rows = parse(&text);
    assert_eq!(
        value(&rows, "switchyard_config_last_reload_successful", &[]),
        1.0
    );
    assert!(
        value(
            &rows,
            "switchyard_config_last_reload_success_timestamp_seconds",
            &[]
        ) >= loaded_at
    );
    let left: Vec<&(String, Value, f64, String)> = rows
        .iter()
        .filter(|(_, l, _, _)| {
            l["route"] == "idle"
                || l["backend"] == g2.as_str()
                || (l["route"] == "shop" && l["upstream"] == "green")
        })
        .collect();
    assert!(left.is_empty(), "left after the reload: {left:?}");
    assert!(
        !rows
            .iter()
            .any(|(n, _, _, _)| n.starts_with("switchyard_rollout_")),
        "no rollout is left"
    );
    // Counters of what stays keep counting.
    let blue_ok = value(
        &rows,
        "switchyard_requests_total",
        &[("route", "shop"), ("backend", &b), ("code_class", "2xx")],
    );
    assert!(
        blue_ok <= ok
            && blue_ok == shop_sum(&rows, "switchyard_requests_total", ("code_class", "2xx"))
    );
}
