//! The JSON access log: every response flag caused for real and read back from the line,
//! request ids, escaping of what clients send, reloads, SIGUSR1 reopen, and a writer that
//! cannot keep up dropping (and counting) lines instead of holding requests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::bin::Process;
use crate::support::dns::free_port;

use crate::support::proxy::{TempDir, sample, write_atomic};
use crate::support::raw::exchange;
use crate::support::*;

/// Writes `dir`'s `switchyard.yaml`: one listener logging to `log` with `extra` access-log
/// settings (`", buffer_lines: 8"`, or empty), one route to `backend`. Returns its path.
fn log_config(dir: &TempDir, log: &Path, extra: &str, backend: std::net::SocketAddr) -> PathBuf {
    let path = dir.0.join("switchyard.yaml");
    let yaml = format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:0\", access_log: {{ path: {}{extra} }} }}]\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\n\
         upstreams:\n  app: {{ backends: [\"{backend}\"] }}\n\
         routes:\n  - {{ name: r, split: [{{ upstream: app, weight: 1 }}] }}\n",
        log.display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every line of the log at `path`, parsed (each must be one JSON object).
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

/// Waits (up to 20 s) for the line whose request id is `id`.
async fn line(path: &Path, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = lines(path).into_iter().find(|l| l["request_id"] == id) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no line for {id} in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn flags(l: &Value) -> Vec<&str> {
    l["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("no flags in {l}"))
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect()
}

/// A FIFO in `dir` and its read end, open (so writers do not fail) but never read, its buffer
/// already full: a stand-in for a hung disk or a pipe nobody reads, where a writer blocks in
/// write(2) from its first line on. Filled here rather than by switchyard's own lines: lines
/// dropped only show that the queue was full, which on a loaded box is as often a writer not
/// yet scheduled as one stuck in write(2).
fn fifo_nobody_reads(dir: &TempDir) -> (PathBuf, std::fs::File) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = dir.0.join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    // Pages, then single bytes: a write of at most PIPE_BUF bytes goes in whole or not at all,
    // so once even one byte does not, no writer can add anything.
    for chunk in [4096, 1] {
        let bytes = vec![b'\n'; chunk];
        loop {
            match filler.write(&bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("cannot fill the FIFO: {e}"),
            }
        }
    }
    (fifo, reader)
}

async fn get_id(c: &client::TestClient, url: &str, id: &str) -> client::Resp {
    get_with(c, url, &[("x-request-id", id)]).await
}

struct Setup {
    proxy: Proxy,
    log: PathBuf,
    good: TestBackend,
    failing: [TestBackend; 2],
    resetter: TestBackend,
    shadow: TestBackend,
    dead_port: u16,
}

/// One proxy with a route per way to raise a flag.
async fn setup() -> Setup {
    let good = TestBackend::start("good").await;
    let failing = [
        TestBackend::start("f1").await,
        TestBackend::start("f2").await,
    ];
    for f in &failing {
        f.set_failing(100);
    }
    let resetter = TestBackend::start("resetter").await;
    let shadow = TestBackend::start("shadow").await;
    let dead_port = free_port();
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let yaml = format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:0\", access_log: {{ path: {log}, format: json }} }}]\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\n\
         upstreams:\n\
         \x20 good: {{ backends: [\"{good}\"] }}\n\
         \x20 dead:\n    backends: [\"127.0.0.1:{dead_port}\"]\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 5m }}\n\
         \x20 failing: {{ backends: [\"{f1}\", \"{f2}\"] }}\n\
         \x20 resetter: {{ backends: [\"{resetter}\"] }}\n\
         \x20 shadow: {{ backends: [\"{shadow}\"] }}\n\
         routes:\n\
         \x20 - {{ name: dead, match: {{ path_prefix: /dead }}, split: [{{ upstream: dead, weight: 1 }}] }}\n\
         \x20 - {{ name: slow, match: {{ path_prefix: /sleep }}, timeout: 300ms, split: [{{ upstream: good, weight: 1 }}] }}\n\
         \x20 - {{ name: reset, match: {{ path_prefix: /hold }}, split: [{{ upstream: resetter, weight: 1 }}] }}\n\
         \x20 - name: limited\n    match: {{ path_prefix: /limited }}\n    split: [{{ upstream: good, weight: 1 }}]\n    rate_limit: {{ requests_per_second: 0.001, burst: 1 }}\n\
         \x20 - name: abort\n    match: {{ path_prefix: /abort }}\n    split: [{{ upstream: good, weight: 1 }}]\n    fault: {{ abort: {{ percent: 100, status: 503 }} }}\n\
         \x20 - name: delay\n    match: {{ path_prefix: /delay }}\n    split: [{{ upstream: good, weight: 1 }}]\n    fault: {{ delay: {{ percent: 100, duration: 10ms }} }}\n\
         \x20 - name: retry\n    match: {{ path_prefix: /retry }}\n    split: [{{ upstream: failing, weight: 1 }}]\n    retries: {{ attempts: 1, on: [500] }}\n\
         \x20 - name: mirror\n    match: {{ path_prefix: /mirror }}\n    split: [{{ upstream: good, weight: 1 }}]\n    shadow: {{ upstream: shadow, percent: 100 }}\n\
         \x20 - {{ name: stream, match: {{ path_prefix: /stream }}, split: [{{ upstream: good, weight: 1 }}] }}\n\
         \x20 - {{ name: plain, match: {{ path_prefix: /plain }}, split: [{{ upstream: good, weight: 1 }}] }}\n",
        log = log.display(),
        good = good.addr,
        f1 = failing[0].addr,
        f2 = failing[1].addr,
        resetter = resetter.addr,
        shadow = shadow.addr,
    );
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, yaml).unwrap();
    let proxy = Proxy::start_at(dir, path, false).await;
    Setup {
        proxy,
        log,
        good,
        failing,
        resetter,
        shadow,
        dead_port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_is_one_line_with_every_field() {
    let s = setup().await;
    let c = client();
    let r = get_id(&c, &s.proxy.url("/plain/x?q=1"), "plain-1").await;
    assert_eq!(r.status, 200);
    let l = line(&s.log, "plain-1").await;
    assert_eq!(l["listener"], "public");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/plain/x?q=1");
    assert_eq!(l["authority"], s.proxy.addr.to_string());
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["route"], "plain");
    assert_eq!(l["upstream"], "good");
    assert_eq!(l["backend"], s.good.addr.to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["bytes_received"], 0);
    assert_eq!(l["bytes_sent"], r.body.len());
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert!(l["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let time = l["time"].as_str().unwrap();
    assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    assert_eq!(flags(&l), Vec::<&str>::new());
    // Trace context is on by default: a trace started here, switchyard's server span in it.
    let started = l["trace_id"].as_str().unwrap();
    assert!(
        started.len() == 32 && started.bytes().all(|b| b.is_ascii_hexdigit()),
        "{l}"
    );
    assert_eq!(l["span_id"].as_str().unwrap().len(), 16, "{l}");
    // A caller's trace is continued: its trace id, a span of switchyard's own.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_with(
        &c,
        &s.proxy.url("/plain/t"),
        &[("x-request-id", "traced-1"), ("traceparent", parent)],
    )
    .await;
    assert_eq!(r.status, 200);
    let t = line(&s.log, "traced-1").await;
    assert_eq!(t["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{t}");
    let span = t["span_id"].as_str().unwrap();
    assert!(span.len() == 16 && span != "00f067aa0ba902b7", "{t}");
    // One line per request, and only one.
    assert_eq!(
        lines(&s.log)
            .iter()
            .filter(|l| l["request_id"] == "plain-1")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_made_forwarded_and_returned() {
    let s = setup().await;
    let c = client();
    // A client's own id goes to the backend and back.
    let r = get_id(&c, &s.proxy.url("/plain/kept"), "client-id-7").await;
    assert_eq!(r.headers["x-request-id"], "client-id-7");
    s.good.wait_for_path("/plain/kept").await;
    let seen = s.good.seen();
    let at_backend = seen.iter().find(|r| r.uri.path() == "/plain/kept").unwrap();
    assert_eq!(at_backend.headers["x-request-id"], "client-id-7");

    // Without one, switchyard makes one: 32 hex digits, the same at the backend, in the
    // response and in the log.
    let r = get(&c, &s.proxy.url("/plain/made")).await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let seen = s.good.seen();
    let at_backend = seen.iter().find(|r| r.uri.path() == "/plain/made").unwrap();
    assert_eq!(at_backend.headers["x-request-id"], id.as_str());
    assert_eq!(line(&s.log, &id).await["path"], "/plain/made");
    let other = get(&c, &s.proxy.url("/plain/made")).await;
    assert_ne!(other.headers["x-request-id"], id.as_str());

    // An id that could confuse a log reader (quotes, too long) is replaced.
    for bad in ["a\"b", &"x".repeat(129)] {
        let r = get_id(&c, &s.proxy.url("/plain/bad"), bad).await;
        let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{bad} was kept");
        assert_eq!(line(&s.log, &id).await["status"], 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flag_is_raised_by_what_causes_it() {
    let s = setup().await;
    let c = client();
    let url = |p: &str| s.proxy.url(p);

    // UF: nothing listens on the backend's port.
    assert_eq!(get_id(&c, &url("/dead"), "uf").await.status, 502);
    let l = line(&s.log, "uf").await;
    assert_eq!(flags(&l), ["UF"], "{l}");
    assert_eq!(l["backend"], format!("127.0.0.1:{}", s.dead_port));
    // UH: that failure opened the only backend's breaker; nothing can take the next one.
    assert_eq!(get_id(&c, &url("/dead"), "uh").await.status, 503);
    assert_eq!(flags(&line(&s.log, "uh").await), ["UH"]);

    // UT: the route's 300 ms run out while the backend sleeps.
    assert_eq!(get_id(&c, &url("/sleep/5000"), "ut").await.status, 504);
    let l = line(&s.log, "ut").await;
    assert_eq!(flags(&l), ["UT"], "{l}");
    assert_eq!(l["upstream_ms"], Value::Null);

    // UR: the backend dies with the request in progress.
    let held = tokio::spawn({
        let (c, u) = (c.clone(), url("/hold/ur"));
        async move { get_id(&c, &u, "ur").await.status }
    });
    s.resetter.wait_for_path("/hold/ur").await;
    s.resetter.kill();
    assert_eq!(held.await.unwrap(), 502);
    assert_eq!(flags(&line(&s.log, "ur").await), ["UR"]);

    // RL: a burst of one, refilled every 1000 s.
    assert_eq!(get_id(&c, &url("/limited"), "rl-ok").await.status, 200);
    assert_eq!(get_id(&c, &url("/limited"), "rl").await.status, 429);
    assert_eq!(flags(&line(&s.log, "rl").await), ["RL"]);
    assert_eq!(flags(&line(&s.log, "rl-ok").await), Vec::<&str>::new());

    // FI and DI: the route's faults, every time.
    assert_eq!(get_id(&c, &url("/abort"), "fi").await.status, 503);
    assert_eq!(flags(&line(&s.log, "fi").await), ["FI"]);
    assert_eq!(get_id(&c, &url("/delay"), "di").await.status, 200);
    assert_eq!(flags(&line(&s.log, "di").await), ["DI"]);

    // RT: the first backend answers 500, the retry goes to the other (which fails too).
    assert_eq!(get_id(&c, &url("/retry"), "rt").await.status, 500);
    let l = line(&s.log, "rt").await;
    assert_eq!(flags(&l), ["RT"], "{l}");
    assert_eq!(l["attempts"], 2);
    assert_eq!(s.failing[0].traffic() + s.failing[1].traffic(), 2);

    // SH: a copy went to the shadow.
    assert_eq!(get_id(&c, &url("/mirror"), "sh").await.status, 200);
    assert_eq!(flags(&line(&s.log, "sh").await), ["SH"]);
    s.shadow.wait_for_path("/mirror").await;

    // NR: no route takes this host and path.
    assert_eq!(get_id(&c, &url("/nowhere"), "nr").await.status, 404);
    let l = line(&s.log, "nr").await;
    assert_eq!(flags(&l), ["NR"]);
    assert_eq!(l["route"], Value::Null);

    // LR: an ambiguous body length, refused before any backend.
    let reply = exchange(
        s.proxy.addr,
        b"POST /plain HTTP/1.1\r\nHost: a\r\nx-request-id: lr\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), 400);
    assert_eq!(flags(&line(&s.log, "lr").await), ["LR"]);

    // DC: the client leaves while the response streams; the line is written once
    // switchyard finds out (its next write, after the backend sends more).
    let mut sock = TcpStream::connect(s.proxy.addr).await.unwrap();
    sock.write_all(b"GET /stream/dc HTTP/1.1\r\nHost: a\r\nx-request-id: dc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(sock);
    s.good.release("dc");
    let l = line(&s.log, "dc").await;
    assert!(flags(&l).contains(&"DC"), "{l}");
    assert_eq!(l["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_clients_send_cannot_break_a_line() {
    let s = setup().await;
    // A Host with a quote, a backslash, a tab and a byte that is not UTF-8; a path with a
    // percent-encoded quote and newline, logged as the client wrote them.
    let reply = exchange(
        s.proxy.addr,
        b"GET /plain/%22%0A?x=%5C HTTP/1.1\r\nHost: a\"b\\c\td\xffe\r\nx-request-id: esc\r\n\r\n",
    )
    .await;
    assert!(reply.status() > 0);
    // Every line of the file parses (`lines` panics otherwise), and the values came through.
    let l = line(&s.log, "esc").await;
    assert_eq!(l["authority"], "a\"b\\c\td\u{fffd}e");
    assert!(
        l["path"].as_str().unwrap().starts_with("/plain/%22%0A"),
        "{l}"
    );
    let raw = std::fs::read(&s.log).unwrap();
    assert_eq!(
        raw.iter().filter(|&&b| b == b'\n').count(),
        lines(&s.log).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_log_and_a_bad_path_keeps_the_old_one() {
    let b = TestBackend::start("b").await;
    let dir = TempDir::new();
    let (first, second) = (dir.0.join("first.log"), dir.0.join("second.log"));
    let config = |log: &str| {
        format!(
            "listeners: [{{ name: public, bind: \"127.0.0.1:0\", access_log: {{ path: {log} }} }}]\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\n\
             upstreams:\n  app: {{ backends: [\"{}\"] }}\n\
             routes:\n  - {{ name: r, split: [{{ upstream: app, weight: 1 }}] }}\n",
            b.addr
        )
    };
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&first.display().to_string())).unwrap();
    let proxy = Proxy::start_at(dir, path, false).await;
    let c = client();
    get_id(&c, &proxy.url("/"), "one").await;
    line(&first, "one").await;

    // A directory that does not exist: rejected with the key's path; the old log stays.
    let missing = proxy.dir.0.join("no/such/dir.log");
    write_atomic(&proxy.config_path, &config(&missing.display().to_string()));
    let r = proxy.post_reload().await;
    assert_eq!(r.status, 422);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body["errors"][0]["path"], "listeners[0].access_log.path",
        "{body}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&missing.display().to_string()) && message.contains("No such file"),
        "{message}"
    );
    get_id(&c, &proxy.url("/"), "two").await;
    line(&first, "two").await;

    // A new path: lines from new requests go there.
    write_atomic(&proxy.config_path, &config(&second.display().to_string()));
    let r = proxy.post_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    get_id(&c, &proxy.url("/"), "three").await;
    line(&second, "three").await;
    assert!(lines(&first).iter().all(|l| l["request_id"] != "three"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_logrotate_moved_it() {
    let b = TestBackend::start("b").await;
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let rotated = dir.0.join("access.log.1");
    let config = log_config(&dir, &log, "", b.addr);
    let p = Process::run(&config, &["--no-watch"]);
    let c = client();
    let url = format!("http://{}/", p.proxy);
    get_id(&c, &url, "before").await;
    line(&log, "before").await;

    std::fs::rename(&log, &rotated).unwrap();
    get_id(&c, &url, "moved").await;
    // Until the signal, the open file (now named access.log.1) gets the lines.
    line(&rotated, "moved").await;
    p.signal("USR1");
    p.wait_log("access log reopened");
    get_id(&c, &url, "after").await;
    line(&log, "after").await;
    assert!(lines(&rotated).iter().all(|l| l["request_id"] != "after"));
}

/// The writer sleeps between rounds; with a flush interval longer than the test, only a full
/// batch (128 lines) and shutdown can get lines into the file, so both are what is tested here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_wakes_the_writer_and_shutdown_writes_the_rest() {
    let b = TestBackend::start("b").await;
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let config = log_config(&dir, &log, ", flush_interval: 60s", b.addr);
    let mut p = Process::run(&config, &["--no-watch"]);
    let c = client();
    let url = format!("http://{}/", p.proxy);
    for i in 0..128 {
        assert_eq!(get_id(&c, &url, &format!("batch-{i}")).await.status, 200);
    }
    // The 128th line completes a batch: it is written long before the interval ends.
    line(&log, "batch-127").await;
    for i in 0..3 {
        assert_eq!(get_id(&c, &url, &format!("tail-{i}")).await.status, 200);
    }
    assert!(
        lines(&log)
            .iter()
            .all(|l| !l["request_id"].as_str().unwrap().starts_with("tail-")),
        "a line short of a batch was written before the flush interval"
    );
    // SIGTERM: the queued lines are written before the process exits.
    p.signal("TERM");
    assert!(p.wait_exit().success());
    let mut ids: Vec<String> = lines(&log)
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = (0..128)
        .map(|i| format!("batch-{i}"))
        .chain((0..3).map(|i| format!("tail-{i}")))
        .collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_cannot_write_drops_lines_and_never_holds_a_request() {
    let b = TestBackend::start("b").await;
    let dir = TempDir::new();
    // The FIFO's buffer is full: the writer blocks in write(2), as it would on a hung disk,
    // and the queue (8 lines) fills.
    let (fifo, reader) = fifo_nobody_reads(&dir);
    let path = log_config(&dir, &fifo, ", buffer_lines: 8", b.addr);
    let proxy = Proxy::start_at(dir, path, false).await;
    let c = client();
    let series = format!(
        "switchyard_access_log_dropped_total{{path=\"{}\"}}",
        fifo.display()
    );
    let mut sent = 0;
    loop {
        for _ in 0..100 {
            // Each request is answered although its line cannot be written.
            let r = tokio::time::timeout(Duration::from_secs(10), get(&c, &proxy.url("/")))
                .await
                .expect("a request waited for the access log");
            assert_eq!(r.status, 200);
        }
        sent += 100;
        let m = proxy.metrics().await;
        let dropped = sample(&m, &series).unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(sent < 5000, "nothing dropped after {sent} requests:\n{m}");
    }
    let m = proxy.metrics().await;
    let queued = sample(
        &m,
        &format!(
            "switchyard_access_log_lines_total{{path=\"{}\"}}",
            fifo.display()
        ),
    )
    .unwrap();
    let dropped = sample(&m, &series).unwrap();
    // Every request's line was queued or dropped (the last one's maybe not yet: its exchange
    // can end just after the client has its response).
    let accounted = queued + dropped;
    assert!(
        accounted <= sent as f64 && accounted >= sent as f64 - 1.0,
        "{accounted} of {sent}"
    );
    drop(reader);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_without_access_log_add_no_request_id() {
    let b = TestBackend::start("b").await;
    let yaml = format!(
        "{HEAD}upstreams:\n  app: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: r, split: [{{ upstream: app, weight: 1 }}] }}\n",
        b.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let r = get(&client(), &proxy.url("/x")).await;
    assert!(!r.headers.contains_key("x-request-id"));
    assert!(!b.seen()[0].headers.contains_key("x-request-id"));
}

/// LE: out of file descriptors, switchyard cannot open a connection to the backend; it answers
/// 503 itself, and the line says it was switchyard's own shortage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_line_says_le() {
    let b = TestBackend::start("b").await;
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let path = log_config(&dir, &log, "", b.addr);
    let sy = Process::run_with_fd_limit(&path, &["--workers", "1", "--no-watch"], 64);
    // Connected first, so accepted while descriptors are left (the backlog is first in, first
    // out); then more connections than descriptors, held open, until accepting fails.
    let mut waiting = TcpStream::connect(sy.proxy).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(sy.proxy).await.unwrap());
    }
    sy.wait_log("accept failed");
    // No backend connection is pooled yet: this request needs a socket there is none for.
    waiting
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-request-id: le\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), waiting.read(&mut buf))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    let l = line(&log, "le").await;
    assert_eq!(flags(&l), ["LE"], "{l}");
    assert_eq!(b.traffic(), 0);
    drop(held);
}

/// A writer stuck in write(2) (a FIFO nobody reads stands in for a hung disk or an unread
/// stderr pipe) must not keep switchyard from exiting: it is abandoned after its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stuck_in_write_does_not_hold_the_exit() {
    let b = TestBackend::start("b").await;
    let dir = TempDir::new();
    // Held open and never read until the process has exited.
    let (fifo, reader) = fifo_nobody_reads(&dir);
    let config = log_config(
        &dir,
        &fifo,
        ", buffer_lines: 8, flush_interval: 1ms",
        b.addr,
    );
    let mut p = Process::run(&config, &["--no-watch"]);
    let c = client();
    let url = format!("http://{}/", p.proxy);
    let series = format!(
        "switchyard_access_log_dropped_total{{path=\"{}\"}}",
        fifo.display()
    );
    // Until lines are dropped: the writer is blocked in write(2) on the full FIFO, and the
    // queue behind it is full.
    for round in 0.. {
        for _ in 0..100 {
            assert_eq!(get(&c, &url).await.status, 200);
        }
        let m = get(&c, &format!("http://{}/metrics", p.admin)).await;
        if sample(m.text(), &series).unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(
            round < 50,
            "nothing dropped after {} requests",
            (round + 1) * 100
        );
    }
    p.signal("TERM");
    p.wait_log("access log lines still queued");
    p.wait_exit();
    drop(reader);
}
