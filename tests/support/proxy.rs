//! switchyard in-process, on 127.0.0.1:0, from a config file in a private temp directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard::app::{self, Options, Running};
use switchyard::reload::ConfigSource;
use switchyard::shared::ReloadEvent;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Proxy {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub dir: TempDir,
}

/// Writes `text` to `path` the way editors and tools do: a temp file, then a rename.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Proxy {
    /// Starts switchyard watching its config file.
    pub async fn start(yaml: &str) -> Proxy {
        Self::start_with(yaml, true).await
    }

    pub async fn start_with(yaml: &str, watch: bool) -> Proxy {
        let dir = TempDir::new();
        let config_path = dir.0.join("switchyard.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        Self::start_at(dir, config_path, watch).await
    }

    /// Starts from a config at `path` inside `dir` (which may be a symlink).
    pub async fn start_at(dir: TempDir, config_path: PathBuf, watch: bool) -> Proxy {
        Self::start_full(dir, config_path, watch, 1).await
    }

    /// Starts with `workers` worker threads.
    pub async fn start_full(
        dir: TempDir,
        config_path: PathBuf,
        watch: bool,
        workers: usize,
    ) -> Proxy {
        let running = app::start(Options {
            source: ConfigSource::File(config_path.clone()),
            watch,
            workers,
        })
        .await
        .unwrap_or_else(|e| panic!("switchyard did not start: {e}"));
        Proxy {
            addr: running.proxy_addr(),
            admin: running.admin_addr,
            running: Some(running),
            config_path,
            dir,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn reload_event(&self) -> ReloadEvent {
        *self.running().shared.reload_events().borrow()
    }

    /// Rewrites the config file and waits until switchyard has tried to load it.
    pub async fn rewrite(&self, yaml: &str) -> ReloadEvent {
        let before = self.reload_event();
        write_atomic(&self.config_path, yaml);
        self.wait_reload_after(before).await
    }

    /// Waits for the first reload attempt after `before`.
    pub async fn wait_reload_after(&self, before: ReloadEvent) -> ReloadEvent {
        let mut rx = self.running().shared.reload_events();
        let ev = tokio::time::timeout(
            Duration::from_secs(20),
            rx.wait_for(|e| e.attempts > before.attempts),
        )
        .await
        .expect("no reload attempt within 20 s")
        .expect("reloader gone");
        *ev
    }

    pub async fn shutdown(mut self) -> bool {
        self.running.take().unwrap().shutdown().await
    }
}

/// The YAML list of backend addresses.
pub fn addrs(backends: &[&super::backend::TestBackend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// Listener and admin on port 0: the common head of every test config.
pub const HEAD: &str =
    "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]\nadmin: { bind: \"127.0.0.1:0\" }\n";

impl Proxy {
    /// The admin API's `/status`.
    pub async fn status(&self) -> serde_json::Value {
        let r = super::client::get(&super::client::client(), &self.admin_url("/status")).await;
        serde_json::from_slice(&r.body).expect("status is JSON")
    }

    /// `/status` of one backend.
    pub async fn backend_status(
        &self,
        upstream: &str,
        addr: std::net::SocketAddr,
    ) -> serde_json::Value {
        let s = self.status().await;
        let up = s["upstreams"]
            .as_array()
            .and_then(|ups| ups.iter().find(|u| u["name"] == upstream))
            .unwrap_or_else(|| panic!("no upstream {upstream} in {s}"));
        up["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["address"] == addr.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no backend {addr} in {up}"))
    }

    /// Polls `/status` until `cond` holds for the backend (bounded: 20 s).
    pub async fn wait_backend(
        &self,
        upstream: &str,
        addr: std::net::SocketAddr,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..2000 {
            let b = self.backend_status(upstream, addr).await;
            if cond(&b) {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "backend {addr} never became {what}: {}",
            self.backend_status(upstream, addr).await
        );
    }

    /// Polls `/metrics` until `series` reaches `at_least` (bounded: 20 s); returns that page.
    /// Some counts land a moment after the client sees their cause (a connection's end).
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> String {
        for _ in 0..2000 {
            let m = self.metrics().await;
            if sample(&m, series) >= Some(at_least) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let m = self.metrics().await;
        panic!("{series} never reached {at_least}: {m}");
    }

    /// `POST /reload`: the reload's answer (422 with every error when the file is rejected).
    pub async fn post_reload(&self) -> super::client::Resp {
        let req = http::Request::post(self.admin_url("/reload"))
            .body(Default::default())
            .unwrap();
        super::client::send(&super::client::client(), req).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = super::client::get(&super::client::client(), &self.admin_url("/metrics")).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

/// The value of one sample line of a Prometheus text page (`name{labels}` exactly).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
