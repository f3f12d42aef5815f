//! What switchyard does with hostile files at its config path, in the real binary with one
//! worker (the worker that also serves the admin API): a FIFO, `/dev/zero`, a directory and an
//! oversized file are each refused at once with a clear error, the admin API keeps answering,
//! the old config keeps serving, and SIGTERM still drains and exits.

use std::path::Path;
use std::time::Duration;

use crate::support::bin::Process;
use crate::support::proxy::{TempDir, write_atomic};
use crate::support::*;

fn config(b: &TestBackend, upstream: &str) -> String {
    format!(
        "{HEAD}upstreams:\n  {upstream}: {{ backends: {} }}\nroutes:\n  - name: r\n    split: [{{ upstream: {upstream}, weight: 1 }}]\n",
        addrs(&[b])
    )
}

/// Puts what `make` creates at `path` in one rename, as a deploy tool would.
fn replace_with(path: &Path, make: impl FnOnce(&Path)) {
    let tmp = path.with_extension("new");
    make(&tmp);
    if std::fs::metadata(&tmp).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}

/// The next rejection that is not the config file missing: the watcher may look while a
/// replacement that cannot be a rename (a directory) has removed the old file.
fn next_rejection(sy: &Process) -> String {
    loop {
        let line = sy.wait_log("config rejected: ");
        if !line.contains("No such file or directory") {
            return line;
        }
    }
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo failed");
}

/// A GET that fails the test instead of hanging it when switchyard does not answer.
async fn get_bounded(url: &str) -> Resp {
    tokio::time::timeout(Duration::from_secs(20), get(&client(), url))
        .await
        .unwrap_or_else(|_| panic!("no answer from {url} within 20 s"))
}

use crate::support::client::Resp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_dev_zero_a_directory_or_a_huge_file_at_the_config_path_is_refused_at_once() {
    let app = TestBackend::start("app").await;
    let dir = TempDir::new();
    let path = dir.0.join("switchyard.yaml");
    std::fs::write(&path, config(&app, "first")).unwrap();
    let mut sy = Process::run(&path, &["--workers", "1"]);
    let (livez, proxy) = (
        format!("http://{}/livez", sy.admin),
        format!("http://{}/", sy.proxy),
    );
    assert_eq!(get_bounded(&proxy).await.status, 200);
    let baseline_kib = sy.peak_rss_kib();

    // Nothing ever writes to this FIFO: a blocking read would wedge the worker for good.
    replace_with(&path, mkfifo);
    let line = next_rejection(&sy);
    assert!(
        line.contains("is a FIFO (named pipe), not a regular file"),
        "{line}"
    );
    assert_eq!(get_bounded(&livez).await.status, 200);
    assert_eq!(
        get_bounded(&proxy).await.status,
        200,
        "the old config serves"
    );

    replace_with(&path, |p| {
        std::os::unix::fs::symlink("/dev/zero", p).unwrap()
    });
    let line = next_rejection(&sy);
    assert!(line.contains("is a character device"), "{line}");

    replace_with(&path, |p| std::fs::create_dir(p).unwrap());
    let line = next_rejection(&sy);
    assert!(line.contains("is a directory"), "{line}");
    std::fs::remove_dir(&path).unwrap();

    // Valid YAML (comments after the config), only too large.
    replace_with(&path, |p| {
        let mut text = config(&app, "second");
        text.push_str(&format!("#{}\n", "x".repeat(99)).repeat(170_000));
        std::fs::write(p, text).unwrap();
    });
    let line = next_rejection(&sy);
    assert!(line.contains("is larger than 16 MiB"), "{line}");
    assert_eq!(get_bounded(&livez).await.status, 200);
    let grew_mib = sy.peak_rss_kib().saturating_sub(baseline_kib) / 1024;
    assert!(
        grew_mib < 64,
        "peak RSS grew by {grew_mib} MiB refusing /dev/zero and a 17 MB file"
    );

    // Still watching: a good file applies.
    write_atomic(&path, &config(&app, "third"));
    sy.wait_log("config applied");

    replace_with(&path, mkfifo);
    sy.wait_log("config rejected: ");
    sy.signal("TERM");
    let status = tokio::task::spawn_blocking(move || sy.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
