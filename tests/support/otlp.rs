//! A real OTLP/HTTP trace collector for tests: `otlp_receiver.py` (Python's official
//! `opentelemetry-proto`, which `scripts/test.sh` installs) on a loopback port, started here and
//! stopped by PID. What it decoded arrives as JSON lines; tests wait on them (a signal, not a
//! sleep).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

#[derive(Default)]
struct Seen {
    spans: Vec<Value>,
    posts: Vec<Value>,
    errors: Vec<String>,
}

pub struct Collector {
    child: Child,
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    lines: watch::Receiver<usize>,
}

impl Collector {
    /// Starts the receiver with `args` (`--fail-first N`, `--status CODE`).
    pub fn start(args: &[&str]) -> Collector {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (scripts/test.sh installs it and opentelemetry-proto)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the OTLP receiver did not start (is opentelemetry-proto installed?): {first:?}"
                )
            });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, lines) = watch::channel(0usize);
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).expect("the receiver prints JSON");
                {
                    let mut s = s.lock().unwrap();
                    if let Some(span) = v.get("span") {
                        s.spans.push(span.clone());
                    } else if let Some(post) = v.get("post") {
                        s.posts.push(post.clone());
                    } else {
                        s.errors.push(v["error"].as_str().unwrap_or("?").to_owned());
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Collector {
            child,
            port,
            seen,
            lines,
        }
    }

    /// The OTLP/HTTP traces endpoint, as `tracing.otlp.endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    pub fn spans(&self) -> Vec<Value> {
        self.seen.lock().unwrap().spans.clone()
    }

    /// Every POST answered: `{status, spans, content_type, auth}`.
    pub fn posts(&self) -> Vec<Value> {
        self.seen.lock().unwrap().posts.clone()
    }

    /// What the receiver found malformed; a test expects none.
    pub fn errors(&self) -> Vec<String> {
        self.seen.lock().unwrap().errors.clone()
    }

    /// Waits until the spans decoded so far satisfy `done`, and returns them.
    pub async fn wait_spans(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut lines = self.lines.clone();
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                lines.changed().await.expect("the OTLP receiver stopped");
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "no {what} within 30 s; the collector has {:#?}, errors {:?}",
                self.spans(),
                self.errors()
            )
        })
    }

    /// Waits until `n` POSTs were answered.
    pub async fn wait_posts(&self, n: usize) -> Vec<Value> {
        let mut lines = self.lines.clone();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let posts = self.posts();
                if posts.len() >= n {
                    return posts;
                }
                lines.changed().await.expect("the OTLP receiver stopped");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} exports within 30 s: {:?}", self.posts()))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The spans of one trace (hex trace id).
pub fn of_trace<'a>(spans: &'a [Value], trace_id: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["trace_id"] == trace_id).collect()
}

/// (trace id, parent id, sampled) of a `traceparent` value.
pub fn traceparent(v: &str) -> (String, String, bool) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(parts[0], "00", "switchyard writes version 00: {v:?}");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3] == "01")
}
