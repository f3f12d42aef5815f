//! The admin API: health, status and metrics agree with the traffic sent.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_describe_what_was_sent() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let config = format!(
        "{HEAD}upstreams:\n  blue: {{ backends: {} }}\n  green: {{ backends: {} }}\n\
         routes:\n  - name: shop\n    match: {{ host: shop.example.com, path_prefix: /cart }}\n\
         \x20   split: [{{ upstream: blue, weight: 3 }}, {{ upstream: green, weight: 1 }}]\n",
        addrs(&[&blue]),
        addrs(&[&green])
    );
    let proxy = Proxy::start(&config).await;
    let c = client();
    for _ in 0..8 {
        let r = get_with(&c, &proxy.url("/cart"), &[("host", "shop.example.com")]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(get(&c, &proxy.url("/cart")).await.status, 404, "wrong host");

    assert_eq!(get(&c, &proxy.admin_url("/livez")).await.status, 200);
    assert_eq!(get(&c, &proxy.admin_url("/readyz")).await.text(), "ready\n");

    let status: serde_json::Value =
        serde_json::from_slice(&get(&c, &proxy.admin_url("/status")).await.body).unwrap();
    assert_eq!(status["generation"], 1);
    let route = &status["routes"][0];
    assert_eq!(route["name"], "shop");
    assert_eq!(route["match"]["host"], "shop.example.com");
    assert_eq!(route["split"][0]["weight"], 3);
    assert_eq!(route["split"][0]["responses"]["2xx"], 6);
    assert_eq!(route["split"][1]["responses"]["2xx"], 2);
    assert_eq!(
        status["upstreams"][0]["backends"][0]["address"],
        blue.addr.to_string()
    );
    assert_eq!(status["upstreams"][0]["backends"][0]["in_flight"], 0);

    let metrics = get(&c, &proxy.admin_url("/metrics")).await;
    assert_eq!(
        metrics.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let m = metrics.text();
    for line in [
        format!(
            "switchyard_requests_total{{route=\"shop\",upstream=\"blue\",backend=\"{}\",code_class=\"2xx\"}} 6",
            blue.addr
        ),
        format!(
            "switchyard_requests_total{{route=\"shop\",upstream=\"green\",backend=\"{}\",code_class=\"2xx\"}} 2",
            green.addr
        ),
        "switchyard_route_weight{route=\"shop\",upstream=\"blue\"} 3".to_owned(),
        "switchyard_unrouted_requests_total 1".to_owned(),
        "switchyard_config_generation 1".to_owned(),
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line}\n{m}");
    }

    let r = send(
        &c,
        http::Request::get(proxy.admin_url("/reload"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(get(&c, &proxy.admin_url("/nope")).await.status, 404);
}
