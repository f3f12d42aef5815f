//! The request path's pieces, measured: route match, split pick, histogram record (alone and
//! under 2 threads), snapshot load, and a whole proxied round trip in-process on loopback.
//!
//! cargo bench --bench hot_path

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use switchyard::config::parse_str;
use switchyard::routing::Router;
use switchyard::routing::Split;
use switchyard::stats::Recorder;

fn routes_config(n: usize) -> String {
    let mut routes = String::new();
    for i in 0..n {
        routes.push_str(&format!(
            "  - {{ name: r{i}, match: {{ host: h{i}.example.com, path_prefix: /api/v{i} }}, split: [{{upstream: u, weight: 1}}] }}\n"
        ));
    }
    routes.push_str(
        "  - { name: wild, match: { host: '*.example.com' }, split: [{upstream: u, weight: 1}] }\n",
    );
    format!(
        "listeners: [{{bind: '127.0.0.1:0'}}]\nupstreams: {{ u: {{ backends: ['h:1'] }} }}\nroutes:\n{routes}"
    )
}

fn route_match(c: &mut Criterion) {
    let config = parse_str(&routes_config(20)).unwrap();
    let router = Router::new(&config.routes);
    let headers = HeaderMap::new();
    c.bench_function("route match (21 routes, exact host)", |b| {
        b.iter(|| {
            router.find(
                black_box(Some("h17.example.com")),
                black_box("/api/v17/items"),
                &headers,
            )
        })
    });
    c.bench_function("route match (21 routes, wildcard fallback)", |b| {
        b.iter(|| {
            router.find(
                black_box(Some("x.example.com")),
                black_box("/other"),
                &headers,
            )
        })
    });
}

fn split_pick(c: &mut Criterion) {
    let split = Split::new(&["stable", "canary"], &[95, 5], true);
    let mut seq = 0u64;
    c.bench_function("split pick (weighted)", |b| {
        b.iter(|| {
            seq += 1;
            split.pick(black_box(seq))
        })
    });
    c.bench_function("split pick (sticky key)", |b| {
        b.iter(|| split.pick_sticky(black_box(b"user-12345")))
    });
}

fn histogram_record(c: &mut Criterion) {
    let windowed = Recorder::windowed(Duration::from_secs(10), 2);
    c.bench_function("histogram record (1 thread)", |b| {
        b.iter(|| {
            windowed.record(
                black_box(Duration::from_micros(1234)),
                tokio::time::Instant::now(),
            )
        })
    });
    // Two threads recording into the same backend's recorder, as two workers would: each
    // thread is its own shard, so they never wait on each other.
    let shared = Arc::new(Recorder::windowed(Duration::from_secs(10), 2));
    c.bench_function("histogram record (2 threads, per record)", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for worker in 0..2 {
                    let r = Arc::clone(&shared);
                    s.spawn(move || {
                        switchyard::shard::set_current(worker);
                        for i in 0..iters {
                            r.record(
                                Duration::from_micros(100 + i % 5000),
                                tokio::time::Instant::now(),
                            );
                        }
                    });
                }
            });
            // Wall time for `iters` records on each of two threads at once.
            start.elapsed()
        })
    });
}

fn snapshot_load(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "listeners: [{bind: '127.0.0.1:0'}]\nadmin: {bind: '127.0.0.1:0'}\nupstreams: { u: { backends: ['127.0.0.1:9'] } }\nroutes: [{ name: r, split: [{upstream: u, weight: 1}] }]\n",
    )
    .unwrap();
    let running = rt
        .block_on(switchyard::app::start(switchyard::app::Options::file(
            &path,
        )))
        .unwrap();
    let shared = Arc::clone(&running.shared);
    c.bench_function("snapshot load", |b| b.iter(|| black_box(shared.snapshot())));
    rt.block_on(running.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A whole request through switchyard to a loopback backend and back, one at a time on a
/// kept-alive connection: latency of the round trip, in-process.
fn round_trip(c: &mut Criterion) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = rt
        .block_on(switchyard::demo::color_backend(
            "blue",
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-bench-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{bind: '127.0.0.1:0'}}]\nadmin: {{bind: '127.0.0.1:0'}}\nupstreams: {{ u: {{ backends: ['{backend}'] }} }}\nroutes: [{{ name: r, split: [{{upstream: u, weight: 1}}] }}]\n"
        ),
    )
    .unwrap();
    let running = rt
        .block_on(switchyard::app::start(switchyard::app::Options::file(
            &path,
        )))
        .unwrap();
    let addr = running.proxy_addr();
    let mut sender = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    });
    c.bench_function("proxy round trip (in-process, loopback)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = http::Request::get("/")
                    .header("host", "bench")
                    .body(Empty::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap());
            })
        })
    });
    rt.block_on(running.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    route_match,
    split_pick,
    histogram_record,
    snapshot_load,
    round_trip
);
criterion_main!(benches);
