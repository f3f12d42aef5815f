//! `switchyard check`, run as a new user runs it, over every negative fixture in
//! `config/invalid/*.yaml` and every example in `config/*.yaml`.
//!
//! A fixture is an otherwise valid config with one mistake (or, for `several-errors.yaml`, a few).
//! Its leading comment lines say what `check` must print:
//!
//! - `# expect: TEXT` (one or more): stderr must contain TEXT (the YAML path of the mistake and a
//!   distinctive part of the message and its fix).
//! - `# errors: N` (optional): the summary line must say exactly N errors, so a fixture cannot
//!   carry a second, unintended mistake.
//! - `# hold: IP:PORT` (optional): the test binds that address first and keeps it bound while
//!   `check` runs, so the config's bind address is in use.
//!
//! Fixtures are discovered by reading the directory: a new file is covered without touching
//! this test.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// At least this many negative fixtures must exist (guards against an empty or moved directory).
const MIN_FIXTURES: usize = 10;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The `*.yaml` files directly in `dir`, sorted; none if the directory does not exist.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[derive(Debug, Default)]
struct Fixture {
    expects: Vec<String>,
    errors: Option<usize>,
    hold: Option<SocketAddr>,
}

/// Reads the directives from the comment lines at the top of a fixture.
fn directives(path: &Path) -> Result<Fixture, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut f = Fixture::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let body = line.trim_start_matches('#').trim();
        let Some((word, value)) = body.split_once(':') else {
            continue;
        };
        // Free-text comments ("The mistake: ...") are fine; a lone lowercase word before a
        // colon is meant as a directive, so a misspelt one is an error rather than ignored.
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            continue;
        }
        let value = value.trim();
        match word {
            "expect" if !value.is_empty() => f.expects.push(value.to_owned()),
            "errors" => {
                let n = value
                    .parse()
                    .map_err(|_| format!("`# errors: {value}` is not a number"))?;
                f.errors = Some(n);
            }
            "hold" => {
                let addr = value
                    .parse()
                    .map_err(|_| format!("`# hold: {value}` is not an IP:port"))?;
                f.hold = Some(addr);
            }
            _ => {
                return Err(format!(
                    "unknown directive `# {word}:`; use `# expect:`, `# errors:` or `# hold:`"
                ));
            }
        }
    }
    if f.expects.is_empty() {
        return Err("no `# expect: TEXT` line at the top of the file".to_owned());
    }
    Ok(f)
}

fn run_check(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}--- stdout ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
}

/// Binds `addr` so that `check` finds it in use. `None` if something else already holds it,
/// which serves the test just as well.
fn hold(addr: SocketAddr) -> Result<Option<TcpListener>, String> {
    match TcpListener::bind(addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(format!("cannot hold {addr} for the test: {e}")),
    }
}

/// Runs `check` on one fixture; `Err` says everything that was wrong.
fn check_fixture(path: &Path) -> Result<(), String> {
    let fixture = directives(path)?;
    let _held = match fixture.hold {
        Some(addr) => hold(addr)?,
        None => None,
    };
    let output = run_check(&["check"], path);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let mut problems = Vec::new();
    if output.status.code() != Some(1) {
        problems.push("expected exit code 1".to_owned());
    }
    for want in &fixture.expects {
        if !stderr.contains(want.as_str()) {
            problems.push(format!("stderr lacks `{want}`"));
        }
    }
    if let Some(n) = fixture.errors {
        let summary = format!(": {n} error{}", if n == 1 { "" } else { "s" });
        if !stderr.lines().any(|l| l.ends_with(&summary)) {
            problems.push(format!("expected a summary line ending in `{summary}`"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{}", problems.join("\n"), describe(&output)))
    }
}

#[test]
fn check_rejects_every_invalid_fixture_with_its_path_and_fix() {
    let dir = config_dir().join("invalid");
    let fixtures = yaml_files(&dir);
    assert!(
        fixtures.len() >= MIN_FIXTURES,
        "expected at least {MIN_FIXTURES} fixtures in {}, found {}",
        dir.display(),
        fixtures.len()
    );
    let bind_in_use = dir.join("bind-in-use.yaml");
    assert!(
        directives(&bind_in_use).is_ok_and(|f| f.hold.is_some()),
        "{} must exist with a `# hold: IP:PORT` line",
        bind_in_use.display()
    );

    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|path| {
            check_fixture(path)
                .err()
                .map(|why| format!("=== {}\n{why}", path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_example_config_passes_check() {
    let examples = yaml_files(&config_dir());
    if examples.is_empty() {
        eprintln!(
            "no example configs in {}; nothing to check",
            config_dir().display()
        );
        return;
    }
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|path| {
            let output = run_check(&["check", "--skip-bind"], path);
            (!output.status.success())
                .then(|| format!("=== {}\n{}", path.display(), describe(&output)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} example configs failed `check --skip-bind`:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}
