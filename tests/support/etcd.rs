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

    /// With extra flags (e.g. TLS: then `scheme` is "https").
    pub async fn start_with(extra: Vec<String>, scheme: &'static str) -> Etcd {
        Self::start_until_bound(free_port, extra, scheme).await
    }

    /// On a given client address (one a replica was told about before etcd ran).
    pub async fn start_on(client: SocketAddr, extra: Vec<String>, scheme: &'static str) -> Etcd {
        Self::start_until_bound(|| client, extra, scheme).await
    }

    /// A port [`free_port`] saw free may be taken before etcd binds it (by another test's
    /// listener or outgoing connection): etcd then exits, and starts again on other ports (the
    /// peer port, and the client port where `client` picks a new one).
    async fn start_until_bound(
        client: impl Fn() -> SocketAddr,
        extra: Vec<String>,
        scheme: &'static str,
    ) -> Etcd {
        for _ in 0..5 {
            let mut e = Etcd {
                child: None,
                client: client(),
                peer: free_port(),
                dir: TempDir::new(),
                extra: extra.clone(),
                scheme,
            };
            e.spawn();
            if e.wait_ready().await {
                if scheme == "http" {
                    e.wait_healthy().await;
                }
                return e;
            }
        }
        panic!("etcd found its ports taken 5 times");
    }

    /// Waits (bounded: 30 s) until etcd says it serves clients: true then, false if it exited
    /// because a port was taken; panics with its log otherwise.
    async fn wait_ready(&mut self) -> bool {
        let path = self.log();
        let log = || std::fs::read_to_string(&path).unwrap_or_default();
        for _ in 0..600 {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let text = log();
            if exited.is_none() && text.contains("ready to serve client requests") {
                return true;
            }
            if exited.is_some() {
                self.child = None;
                if text.contains("address already in use") {
                    return false;
                }
                panic!(
                    "etcd exited ({exited:?}): {}",
                    &text[text.len().saturating_sub(3000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = log();
        panic!(
            "etcd did not say it serves clients: {}",
            &text[text.len().saturating_sub(3000)..]
        );
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
            // Passwords hashed at bcrypt's lowest cost: a login then costs etcd about 2 ms of
            // CPU instead of 70 ms, which on a loaded box became a second and ran out the
            // 1 s bound switchyard puts on a call, its login included (lease_ttl 2 s).
            .arg("--bcrypt-cost=4")
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
        assert!(
            self.wait_ready().await,
            "etcd's ports were taken during its outage"
        );
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
