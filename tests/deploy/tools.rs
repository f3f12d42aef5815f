//! The outside tools these tests run, and where scripts/test.sh puts them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::Value;

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Where scripts/test.sh installs tools that are not Debian packages: `bin/` (on its PATH) and
/// `venv/` (a Python virtualenv, so that checkov's pinned dependencies stay out of the
/// system's Python).
fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_TOOLS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("switchyard-tools")
}

/// A command by name: from the tools folder, else from PATH.
pub fn tool(name: &str) -> PathBuf {
    let local = tools_dir().join("bin").join(name);
    if local.exists() {
        return local;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: ./scripts/test.sh installs it"))
}

/// The Python of the tools' virtualenv (it has the Prometheus Operator's models).
pub fn tools_python() -> PathBuf {
    let python = tools_dir().join("venv").join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: ./scripts/test.sh makes it",
        python.display()
    );
    python
}

/// Runs a command to its end with `stdin` written to it.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, b"");
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every document of a YAML stream, as JSON.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v = serde_yaml::Value::deserialize(d).expect("valid YAML");
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}
