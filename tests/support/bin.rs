//! The real `switchyard` binary as a child process, for signals and process-level checks.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Process {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every log line after start-up.
    pub lines: mpsc::Receiver<String>,
    /// The log lines up to start-up.
    pub startup: Vec<String>,
}

/// uid and gid of `nobody`.
pub const NOBODY: u32 = 65534;

/// Whether the tests run as root (the owner of `/proc/self` is the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Gives `path` to `nobody` when the tests run as root, so an unprivileged switchyard may write
/// there.
pub fn give_to_nobody(path: &Path) {
    if is_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
}

fn addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()?.parse().ok()
}

impl Process {
    /// Runs `switchyard run -c CONFIG ARGS..` and waits for it to report its addresses.
    pub fn run(config: &Path, args: &[&str]) -> Process {
        Self::start(Self::command(
            Command::new(env!("CARGO_BIN_EXE_switchyard")),
            config,
            args,
        ))
    }

    /// As [`Process::run`], but as user `nobody` when the tests run as root, so that file
    /// permissions bind it (root's do not).
    pub fn run_unprivileged(config: &Path, args: &[&str]) -> Process {
        let mut cmd = Self::command(Command::new(env!("CARGO_BIN_EXE_switchyard")), config, args);
        if is_root() {
            use std::os::unix::process::CommandExt;
            cmd.uid(NOBODY).gid(NOBODY);
        }
        Self::start(cmd)
    }

    /// [`Process::run`] with at most `nofile` file descriptors (`prlimit --nofile`).
    pub fn run_with_fd_limit(config: &Path, args: &[&str], nofile: u32) -> Process {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_switchyard"));
        Self::start(Self::command(cmd, config, args))
    }

    fn command(mut cmd: Command, config: &Path, args: &[&str]) -> Command {
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn start(mut cmd: Command) -> Process {
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
        // Built first so that a failed start still kills the child.
        let mut p = Process {
            child,
            proxy: unset,
            admin: unset,
            lines: rx,
            startup: Vec::new(),
        };
        while p.proxy == unset || p.admin == unset {
            let line = p
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("switchyard did not report its addresses");
            if line.contains("listening") && p.proxy == unset {
                p.proxy = addr_after(&line, "addr=").unwrap_or(unset);
            }
            if line.contains("switchyard started") {
                p.admin = addr_after(&line, "admin=").unwrap_or(unset);
            }
            p.startup.push(line);
        }
        p
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for a log line containing `needle`; panics after 30 s without a line, with the
    /// lines seen meanwhile.
    pub fn wait_log(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) else {
                panic!("no log line containing {needle:?}; seen meanwhile: {seen:#?}");
            };
            if line.contains(needle) {
                return line;
            }
            seen.push(line);
        }
    }

    /// Peak resident memory of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmHWM")
    }

    /// Waits for the process to exit; panics after 30 s.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..3000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("switchyard did not exit");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
