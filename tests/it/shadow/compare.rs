//! Comparing answers: JSON differences by path, ignored fields, status and header kinds.

use super::*;

async fn compared(
    primary: fn(&str) -> String,
    shadow: fn(&str) -> String,
    block: &str,
) -> (Proxy, Scripted, Scripted) {
    let p = Scripted::start(move |path| (200, "application/json", primary(path))).await;
    let s = Scripted::start(move |path| (200, "application/json", shadow(path))).await;
    let proxy = Proxy::start(&config(p.addr, s.addr, block, "")).await;
    (proxy, p, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_returning_different_json_is_counted_and_shown_with_the_path() {
    let (proxy, _p, _s) = compared(
        |_| r#"{"id":7,"cart":{"items":[{"sku":"a","price":10}]},"ts":"1"}"#.into(),
        |_| r#"{"ts":"2","id":7,"cart":{"items":[{"sku":"a","price":12}]}}"#.into(),
        "percent: 100, compare: true, compare_headers: [], ignore_fields: [/ts]",
    )
    .await;
    let c = client();
    let r = get_with(
        &c,
        &proxy.url("/cart?user=9"),
        &[
            ("authorization", "Bearer s3cret"),
            ("cookie", "session=abc"),
            ("x-user-id", "9"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("\"price\":10"),
        "the client gets the primary's answer"
    );
    let v = wait_shadow(&proxy, "compared", |v| v["compared"] == 1).await;
    assert_eq!(v["mismatched"], 1, "{v}");
    assert_eq!(v["mismatches"]["body"], 1, "{v}");
    let m = &v["recent_mismatches"][0];
    assert_eq!(m["kind"], "body");
    assert_eq!(m["difference"], "/cart/items/0/price");
    assert_eq!(m["request"], "GET /cart?user=9");
    assert_eq!(m["primary_status"], 200);
    assert_eq!(m["shadow_status"], 200);
    let headers = &m["request_headers"];
    assert_eq!(headers["authorization"], "[redacted]");
    assert_eq!(headers["cookie"], "[redacted]");
    assert_eq!(headers["x-user-id"], "9");
    assert!(!v.to_string().contains("s3cret"));
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_shadow_mismatches_total{route=\"r\",upstream=\"next\",kind=\"body\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "switchyard_shadow_requests_total{route=\"r\",upstream=\"next\",result=\"success\"}"
        ),
        Some(1.0)
    );
    let status = proxy.status().await;
    let summary = &status["routes"][0]["shadow"];
    assert_eq!(summary["upstream"], "next", "{status}");
    assert_eq!(summary["sent"], 1);
    assert_eq!(summary["mismatched"], 1);
    // One statistic: the comparisons the rollout gate divides by are the ones shown here.
    assert_eq!(
        sample(
            &metrics,
            "switchyard_shadow_comparisons_total{route=\"r\",upstream=\"next\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_fields_and_key_order_do_not_count() {
    let (proxy, _p, _s) = compared(
        |path| format!(r#"{{"path":"{path}","n":1,"timestamp":"10:00:00","meta":{{"request_id":"p-1"}}}}"#),
        |path| format!(r#"{{ "meta": {{"request_id": "s-9"}}, "timestamp": "10:00:01", "n": 1.0, "path": "{path}" }}"#),
        "percent: 100, compare: true, ignore_fields: [/timestamp, /meta/request_id]",
    )
    .await;
    let c = client();
    for i in 0..5 {
        assert_eq!(get(&c, &proxy.url(&format!("/x/{i}"))).await.status, 200);
    }
    let v = wait_shadow(&proxy, "compared all", |v| v["compared"] == 5).await;
    assert_eq!(v["mismatched"], 0, "{v}");
    assert_eq!(v["recent_mismatches"].as_array().unwrap().len(), 0);

    // The same answers without ignore_fields do differ, at the first ignored field.
    let (proxy, _p, _s) = compared(
        |_| r#"{"n":1,"timestamp":"10:00:00"}"#.into(),
        |_| r#"{"timestamp":"10:00:01","n":1}"#.into(),
        "percent: 100, compare: true",
    )
    .await;
    get(&c, &proxy.url("/")).await;
    let v = wait_shadow(&proxy, "compared", |v| v["compared"] == 1).await;
    assert_eq!(v["recent_mismatches"][0]["difference"], "/timestamp", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_header_differences_are_their_own_kinds() {
    let p = Scripted::start(|_| (200, "text/plain", "ok".into())).await;
    let s = Scripted::start(|path| match path {
        "/s" => (404, "text/plain", "ok".into()),
        _ => (200, "text/html", "ok".into()),
    })
    .await;
    let proxy = Proxy::start(&config(p.addr, s.addr, "percent: 100, compare: true", "")).await;
    let c = client();
    get(&c, &proxy.url("/s")).await;
    get(&c, &proxy.url("/h")).await;
    let v = wait_shadow(&proxy, "compared", |v| v["compared"] == 2).await;
    assert_eq!(v["mismatches"]["status"], 1, "{v}");
    assert_eq!(v["mismatches"]["header"], 1, "{v}");
    let recent = v["recent_mismatches"].as_array().unwrap();
    let h = recent.iter().find(|m| m["kind"] == "header").unwrap();
    assert_eq!(h["difference"], "content-type");
    assert_eq!(h["header_values"]["shadow"], "text/html");
    let st = recent.iter().find(|m| m["kind"] == "status").unwrap();
    assert_eq!(
        (st["primary_status"].as_u64(), st["shadow_status"].as_u64()),
        (Some(200), Some(404))
    );
}
