//! The client against a real etcd (Debian's `etcd-server`; `scripts/test.sh` installs it),
//! started on free loopback ports with a temporary data directory and stopped by PID.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::api::{Compare, Op};
use super::watch::Event;
use super::*;
use crate::config::cluster::{Endpoint, Etcd as EtcdConfig};

struct Server {
    child: Child,
    dir: std::path::PathBuf,
    client: std::net::SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

async fn server() -> (Server, Etcd) {
    let (client, peer) = (free(), free());
    let dir = std::env::temp_dir().join(format!(
        "switchyard-etcd-unit-{}-{}",
        std::process::id(),
        client.port()
    ));
    let (c, p) = (format!("http://{client}"), format!("http://{peer}"));
    let child = Command::new("etcd")
        .args(["--name", "unit", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .arg(format!("--initial-cluster=unit={p}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd: run ./scripts/test.sh, which installs etcd-server");
    let s = Server { child, dir, client };
    let config = EtcdConfig {
        endpoints: vec![Endpoint {
            tls: false,
            authority: s.client.to_string().parse().unwrap(),
        }],
        tls: None,
        auth: None,
    };
    let etcd = Etcd::new(&config, Duration::from_secs(2));
    for _ in 0..600 {
        if etcd.range_prefix("/", true).await.is_ok() {
            return (s, etcd);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("etcd did not come up");
}

fn put(key: &str, value: &str, lease: i64) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_conditioned_on_a_lease_that_ended_is_refused() {
    let (_s, etcd) = server().await;
    let (l1, ttl) = etcd.lease_grant(5).await.unwrap();
    assert!(ttl >= 5);
    let (won, _) = etcd
        .txn(
            &[Compare::ModRevision("/f/leader".into(), 0)],
            &[put("/f/leader", "a", l1)],
        )
        .await
        .unwrap();
    assert!(won, "the first to try leads");
    let (lost, _) = etcd
        .txn(
            &[Compare::ModRevision("/f/leader".into(), 0)],
            &[put("/f/leader", "b", 0)],
        )
        .await
        .unwrap();
    assert!(!lost, "a second one does not");
    let (ok, rev) = etcd
        .txn(
            &[Compare::Lease("/f/leader".into(), l1)],
            &[put("/f/state", "1", 0)],
        )
        .await
        .unwrap();
    assert!(ok && rev > 0, "the leader writes while it holds its lease");
    assert!(etcd.lease_keepalive(l1).await.unwrap());

    // Its lease ends (as when it stops renewing): the leader key goes with it.
    etcd.lease_revoke(l1).await.unwrap();
    assert!(
        !etcd.lease_keepalive(l1).await.unwrap(),
        "an ended lease cannot be renewed"
    );
    let guard = [
        Compare::Lease("/f/leader".into(), l1),
        Compare::ModRevision("/f/state".into(), rev),
    ];
    let (stale, _) = etcd.txn(&guard, &[put("/f/state", "2", 0)]).await.unwrap();
    assert!(!stale, "a write under a lease that ended is refused");
    // Someone else leads now: still refused for the old lease, not for the new one.
    let (l2, _) = etcd.lease_grant(5).await.unwrap();
    etcd.txn(
        &[Compare::ModRevision("/f/leader".into(), 0)],
        &[put("/f/leader", "c", l2)],
    )
    .await
    .unwrap();
    assert!(
        !etcd
            .txn(&guard, &[put("/f/state", "2", 0)])
            .await
            .unwrap()
            .0
    );
    let guard2 = [
        Compare::Lease("/f/leader".into(), l2),
        Compare::ModRevision("/f/state".into(), rev),
    ];
    assert!(
        etcd.txn(&guard2, &[put("/f/state", "3", 0)])
            .await
            .unwrap()
            .0
    );
    let range = etcd.range_prefix("/f/state", false).await.unwrap();
    assert_eq!(range.kvs[0].value, b"3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_puts_and_deletes_from_a_revision() {
    let (_s, etcd) = server().await;
    etcd.put("/w/a", b"1", 0).await.unwrap();
    let start = etcd.range_prefix("/w/", false).await.unwrap();
    let mut w = etcd.watch_prefix("/w/", start.revision + 1).await.unwrap();
    etcd.put("/w/b", b"2", 0).await.unwrap();
    let (lease, _) = etcd.lease_grant(5).await.unwrap();
    etcd.put("/w/c", b"3", lease).await.unwrap();
    etcd.lease_revoke(lease).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("no event")
            .unwrap()
            .expect("the watch ended");
        for e in batch.events {
            seen.push(match e {
                Event::Put(kv) => format!("put {} {}", kv.key, String::from_utf8_lossy(&kv.value)),
                Event::Delete(kv) => format!("delete {}", kv.key),
            });
        }
    }
    assert_eq!(seen, ["put /w/b 2", "put /w/c 3", "delete /w/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_said_so_and_the_next_endpoint_is_tried() {
    let (s, _) = server().await;
    let closed = free();
    let up = s.client;
    let config = EtcdConfig {
        endpoints: vec![
            Endpoint {
                tls: false,
                authority: closed.to_string().parse().unwrap(),
            },
            Endpoint {
                tls: false,
                authority: up.to_string().parse().unwrap(),
            },
        ],
        tls: None,
        auth: None,
    };
    let etcd = Etcd::new(&config, Duration::from_secs(2));
    etcd.put("/e/k", b"v", 0).await.unwrap();
    let only_closed = EtcdConfig {
        endpoints: vec![Endpoint {
            tls: false,
            authority: closed.to_string().parse().unwrap(),
        }],
        tls: None,
        auth: None,
    };
    let err = Etcd::new(&only_closed, Duration::from_secs(2))
        .range_prefix("/", false)
        .await
        .unwrap_err();
    assert!(!err.answered(), "{err}");
    assert!(err.to_string().contains(&closed.to_string()), "{err}");
}
