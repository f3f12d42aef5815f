//! A real etcd (Debian's `etcd-server`, which `scripts/test.sh` installs) on random loopback
//! ports with a temporary data directory, stopped by PID. It can be stopped and started again
//! on the same ports and data (an outage), and read through its JSON gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::client::client;
use super::proxy::TempDir;

pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    pub dir: TempDir,
    /// Extra flags (TLS).
    extra: Vec<String>,
    pub scheme: &'static str,
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it answers.
    pub async fn start() -> Etcd {
        Self::start_with(Vec::new(), "http").await
    }

    /// With extra flags (e.g. TLS: then `scheme` is "https" and the caller checks health).
    pub async fn start_with(extra: Vec<String>, scheme: &'static str) -> Etcd {
        Self::start_on(free_port(), extra, scheme).await
    }

    /// On a given client address (one a replica was told about before etcd ran).
    pub async fn start_on(client: SocketAddr, extra: Vec<String>, scheme: &'static str) -> Etcd {
        let mut e = Etcd {
            child: None,
            client,
            peer: free_port(),
            dir: TempDir::new(),
            extra,
            scheme,
        };
        e.spawn();
        if scheme == "http" {
            e.wait_healthy().await;
        }
        e
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.client)
    }

    fn spawn(&mut self) {
        let data = self.dir.0.join("data");
        let log = std::fs::File::create(self.dir.0.join("etcd.log")).unwrap();
        let client = format!("{}://{}", self.scheme, self.client);
        let peer = format!("http://{}", self.peer);
        let child = Command::new("etcd")
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): run ./scripts/test.sh, which installs etcd-server")
            });
        self.child = Some(child);
    }

    /// Waits (bounded: 30 s) until etcd serves reads.
    pub async fn wait_healthy(&self) {
        for _ in 0..600 {
            if self
                .call("/v3/kv/range", json!({"key": "AA=="}))
                .await
                .is_some()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.0.join("etcd.log")).unwrap_or_default();
        panic!(
            "etcd did not come up: {}",
            &log[log.len().saturating_sub(3000)..]
        );
    }

    /// Stops etcd (SIGKILL, by PID): an outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_healthy().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A gateway call over plain HTTP; `None` if etcd did not answer 200.
    pub async fn call(&self, path: &str, body: Value) -> Option<Value> {
        let req = Request::post(format!("http://{}{path}", self.client))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
            .await
            .ok()?
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&bytes).ok()
    }

    /// The value of `key`, as JSON.
    pub async fn get(&self, key: &str) -> Option<Value> {
        let v = self
            .call("/v3/kv/range", json!({"key": B64.encode(key)}))
            .await?;
        let value = v["kvs"][0]["value"].as_str()?;
        serde_json::from_slice(&B64.decode(value).ok()?).ok()
    }

    pub fn log(&self) -> PathBuf {
        self.dir.0.join("etcd.log")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
