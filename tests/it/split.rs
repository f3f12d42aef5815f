//! Weighted and sticky splits, override header: shares as the client and the backends saw them.

use std::collections::HashMap;

use futures_util::StreamExt;

use crate::support::*;

fn three_way(b: &[&TestBackend; 3], w: [u32; 3], extra: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  blue: {{ backends: {} }}\n  green: {{ backends: {} }}\n  grey: {{ backends: {} }}\n\
         routes:\n  - name: r\n    split: [{{ upstream: blue, weight: {} }}, {{ upstream: green, weight: {} }}, {{ upstream: grey, weight: {} }}]\n{extra}",
        addrs(&[b[0]]),
        addrs(&[b[1]]),
        addrs(&[b[2]]),
        w[0],
        w[1],
        w[2]
    )
}

async fn backends() -> [TestBackend; 3] {
    [
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
        TestBackend::start("grey").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_holds_over_10000_requests() {
    let [blue, green, grey] = backends().await;
    let proxy = Proxy::start(&three_way(&[&blue, &green, &grey], [70, 20, 10], "")).await;
    let c = client();
    let url = proxy.url("/");
    let mut by_client: HashMap<String, usize> = HashMap::new();
    let mut responses = futures_util::stream::iter(0..10_000)
        .map(|_| get(&c, &url))
        .buffer_unordered(16);
    while let Some(r) = responses.next().await {
        assert_eq!(r.status, 200, "{}", r.text());
        *by_client.entry(r.backend().to_owned()).or_default() += 1;
    }
    for (b, want) in [(&blue, 0.70), (&green, 0.20), (&grey, 0.10)] {
        let share = b.count() as f64 / 10_000.0;
        assert!(
            (share - want).abs() <= 0.02,
            "{}: {share} (wanted {want})",
            b.name
        );
        assert_eq!(by_client[&b.name], b.count(), "client and backend disagree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_holds_with_two_workers_sharing_the_port() {
    let [blue, green, grey] = backends().await;
    let dir = crate::support::proxy::TempDir::new();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, three_way(&[&blue, &green, &grey], [50, 30, 20], "")).unwrap();
    let proxy = Proxy::start_full(dir, path, true, 2).await;
    // Separate clients, so that connections spread over both workers' sockets.
    let clients: Vec<_> = (0..8).map(|_| client()).collect();
    let url = proxy.url("/");
    let mut responses = futures_util::stream::iter(0..4000)
        .map(|i| get(&clients[i % clients.len()], &url))
        .buffer_unordered(16);
    while let Some(r) = responses.next().await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each worker keeps its own weighted sequence: the sum is still within a few requests.
    for (b, want) in [(&blue, 0.50), (&green, 0.30), (&grey, 0.20)] {
        let share = b.count() as f64 / 4000.0;
        assert!(
            (share - want).abs() <= 0.02,
            "{}: {share} (wanted {want})",
            b.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_stay_on_a_growing_canary() {
    let [stable, canary, _] = backends().await;
    let config = |w: u32| {
        format!(
            "{HEAD}upstreams:\n  stable: {{ backends: {} }}\n  canary: {{ backends: {} }}\n\
             routes:\n  - name: r\n    sticky: {{ header: x-user-id }}\n    split: [{{ upstream: stable, weight: {} }}, {{ upstream: canary, weight: {w} }}]\n",
            addrs(&[&stable]),
            addrs(&[&canary]),
            100 - w
        )
    };
    let proxy = Proxy::start(&config(5)).await;
    let c = client();
    let users = 1000;
    let mut on_canary = vec![false; users];
    for (step, w) in [5u32, 20, 50].into_iter().enumerate() {
        if step > 0 {
            let ev = proxy.rewrite(&config(w)).await;
            assert_eq!(ev.rejected, 0);
            assert_eq!(ev.generation, step as u64 + 1);
        }
        let mut canary_users = 0;
        for (u, was) in on_canary.iter_mut().enumerate() {
            let user = format!("user-{u}");
            let first = get_with(&c, &proxy.url("/"), &[("x-user-id", &user)]).await;
            let again = get_with(&c, &proxy.url("/"), &[("x-user-id", &user)]).await;
            assert_eq!(
                first.backend(),
                again.backend(),
                "{user} switched between two requests"
            );
            let now = first.backend() == canary.name;
            assert!(now || !*was, "{user} left the canary when it grew to {w}");
            *was = now;
            canary_users += usize::from(now);
        }
        let share = canary_users as f64 / users as f64;
        assert!(
            (share - f64::from(w) / 100.0).abs() < 0.05,
            "weight {w}: share {share}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_forces_a_route_upstream_and_ignores_others() {
    let [blue, green, grey] = backends().await;
    let extra = "    override_header: x-switchyard-upstream\n";
    // green has weight 0: reachable only by override (a blue-green preview).
    let proxy = Proxy::start(&three_way(&[&blue, &green, &grey], [1, 0, 0], extra)).await;
    let c = client();
    let url = proxy.url("/");
    for _ in 0..20 {
        let forced = get_with(&c, &url, &[("x-switchyard-upstream", "green")]).await;
        assert_eq!(forced.backend(), "green");
        let bogus = get_with(&c, &url, &[("x-switchyard-upstream", "not-an-upstream")]).await;
        assert_eq!(bogus.backend(), "blue");
        let plain = get(&c, &url).await;
        assert_eq!(plain.backend(), "blue");
    }
    assert_eq!(green.count(), 20);
    assert_eq!(grey.count(), 0);
}
