//! A real DNS server for discovery tests: dnsmasq (Debian `dnsmasq-base`, which
//! `scripts/test.sh` installs) on a random loopback port, answering only from a hosts file of
//! its own (`--no-resolv --no-hosts --addn-hosts=FILE`), and authoritative for `.test` so that
//! a name without records gets NXDOMAIN. Started and stopped by PID. Records change by
//! rewriting the file and sending SIGHUP; [`Dns::set`] returns once dnsmasq has said it read the
//! new file. Pods are real HTTP backends on distinct loopback addresses sharing one port.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;

use super::backend::TestBackend;
use super::proxy::{TempDir, write_atomic};

pub struct Dns {
    child: Option<Child>,
    pub addr: SocketAddr,
    hosts: PathBuf,
    /// How many times dnsmasq has read the hosts file (start, then once per SIGHUP).
    reads: watch::Receiver<usize>,
    _dir: TempDir,
}

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("dnsmasq"));
    on_path
        .chain([PathBuf::from("/usr/sbin/dnsmasq")])
        .find(|p| p.is_file())
        .expect("dnsmasq not found: ./scripts/test.sh installs it (Debian package dnsmasq-base)")
}

/// A UDP port nothing listens on right now (dnsmasq needs it free for TCP too; a clash is
/// retried with another).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A loopback port held (UDP and TCP) where nothing answers: a DNS server that is down. Drop
/// it right before starting dnsmasq there, so that no other socket takes the port meanwhile.
pub struct DeadServer {
    pub port: u16,
    _udp: UdpSocket,
    _tcp: std::net::TcpListener,
}

impl DeadServer {
    pub fn new() -> DeadServer {
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return DeadServer {
                    port,
                    _udp: udp,
                    _tcp: tcp,
                };
            }
        }
        panic!("no port free for both UDP and TCP");
    }
}

fn hosts_text(records: &[(&str, &str)]) -> String {
    records
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect()
}

fn write_hosts(path: &Path, records: &[(&str, &str)]) {
    write_atomic(path, &hosts_text(records));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

impl Dns {
    /// Starts on a free port with `records` (name, IP); TTL 0, as dnsmasq gives hosts records.
    pub async fn start(records: &[(&str, &str)]) -> Dns {
        for _ in 0..5 {
            if let Some(dns) = Self::start_on(free_port(), records, 0).await {
                return dns;
            }
        }
        panic!("dnsmasq did not start on any of 5 ports");
    }

    /// Starts on `port` with records of TTL `ttl`; `None` if dnsmasq exited (port taken).
    pub async fn start_on(port: u16, records: &[(&str, &str)], ttl: u32) -> Option<Dns> {
        let dir = TempDir::new();
        // dnsmasq reads the file as `nobody` once it has dropped root: let it, whatever the umask.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hosts = dir.0.join("hosts");
        write_hosts(&hosts, records);
        let mut child = Command::new(binary())
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--pid-file=",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={ttl}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dnsmasq: {e}"));
        let (tx, mut reads) = watch::channel(0usize);
        let stderr = child.stderr.take().unwrap();
        let needle = format!("read {}", hosts.display());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&needle) {
                    tx.send_modify(|n| *n += 1);
                }
            }
            // Dropping `tx` tells a waiter that dnsmasq is gone.
        });
        // dnsmasq binds its sockets before it reads the hosts file: once read, it answers.
        let started = tokio::time::timeout(Duration::from_secs(20), reads.wait_for(|n| *n >= 1))
            .await
            .is_ok_and(|r| r.is_ok());
        if !started {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Dns {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            hosts,
            reads,
            _dir: dir,
        })
    }

    /// Replaces every record, and returns once dnsmasq has read them.
    pub async fn set(&mut self, records: &[(&str, &str)]) {
        let before = *self.reads.borrow();
        write_hosts(&self.hosts, records);
        let pid = self.child.as_ref().expect("dnsmasq is running").id();
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGHUP to dnsmasq failed");
        tokio::time::timeout(
            Duration::from_secs(20),
            self.reads.wait_for(|n| *n > before),
        )
        .await
        .expect("dnsmasq did not re-read its hosts file within 20 s")
        .expect("dnsmasq is gone");
    }

    /// Stops the server (SIGKILL by PID): lookups now get no answer.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn hosts_file(&self) -> &Path {
        &self.hosts
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` pods, `pod-2` on 127.0.0.2, `pod-3` on 127.0.0.3, ..., all on one port (DNS gives
/// addresses; the port is the upstream's).
pub async fn pods(n: u8) -> (u16, Vec<TestBackend>) {
    'port: for _ in 0..20 {
        let first = TestBackend::start_on("pod-2", "127.0.0.2:0".parse().unwrap()).await;
        let port = first.addr.port();
        let mut pods = vec![first];
        for i in 3..2 + n {
            let addr = SocketAddr::from(([127, 0, 0, i], port));
            // Taken on this address (another test's pod): try another port.
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'port;
            }
            pods.push(TestBackend::start_on(&format!("pod-{i}"), addr).await);
        }
        return (port, pods);
    }
    panic!("no port free on 127.0.0.2..{} after 20 tries", 1 + n);
}

/// The pod on 127.0.0.`i`.
pub fn ip(i: u8) -> String {
    format!("127.0.0.{i}")
}
