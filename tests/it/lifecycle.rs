//! Graceful shutdown of the in-process server.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_request_in_flight_and_refuses_new_ones() {
    let app = TestBackend::start("app").await;
    let config = format!(
        "{HEAD}drain_timeout: 20s\nupstreams:\n  app: {{ backends: {} }}\nroutes:\n  - name: r\n    split: [{{ upstream: app, weight: 1 }}]\n",
        addrs(&[&app])
    );
    let proxy = Proxy::start(&config).await;
    let shared = std::sync::Arc::clone(&proxy.running().shared);
    let (url, admin_ready) = (proxy.url("/hold/slow"), proxy.admin_url("/readyz"));
    let proxy_addr = proxy.addr;
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    app.wait_for_path("/hold/slow").await;

    let shutdown = tokio::spawn(proxy.shutdown());
    let c = client();
    // Draining is announced before anything stops.
    for _ in 0..2000 {
        if shared.is_draining() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        get(&c, &admin_ready).await.status,
        503,
        "/readyz while draining"
    );
    // The listener closes: new connections are refused.
    let mut refused = false;
    for _ in 0..2000 {
        if tokio::net::TcpStream::connect(proxy_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener still accepts while draining");
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the request in flight"
    );

    app.release("slow");
    let r = in_flight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "app held slow\n"));
    assert!(
        shutdown.await.unwrap(),
        "everything drained within the timeout"
    );
}
