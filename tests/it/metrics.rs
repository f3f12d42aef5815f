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
    if Command::new("promtool").arg("--version").output().is_ok() {
        let mut lint = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        lint.stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
            &[("route", "dead"), ("code_class", "5xx")]
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
