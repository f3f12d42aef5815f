//! Watches the directories of the config and certificate files and signals when one of them
//! changes. It only signals; the reloader (or a TLS listener's certificate reload) decides.
//!
//! Directories, not files, are watched: an editor's write-to-temp-and-rename and a Kubernetes
//! ConfigMap update (a new `..2024_…` directory, then the `..data` symlink swapped) both replace
//! the inode a file watch would follow.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::reloader::ReloadHandle;

/// Events closer together than this are one change (an editor's save is several events).
pub const SETTLE: Duration = Duration::from_millis(150);

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `files`; each settled change calls `handle.trigger()`.
pub fn watch(files: &[PathBuf], handle: ReloadHandle) -> notify::Result<WatchGuard> {
    watch_with(files, "config", move || handle.trigger())
}

/// Starts watching `files` (`what` names them in logs); each settled change calls `on_change`.
pub fn watch_with(
    files: &[PathBuf],
    what: &'static str,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<WatchGuard> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let names: HashSet<OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(Into::into))
        .collect();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if is_relevant(&ev, &names) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, what, "file watch error"),
        })?;
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| parent_dir(f)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        tracing::info!(dir = %dir.display(), what, "watching for changes");
    }
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait for quiet, so a burst of events makes one reload of the final file.
            loop {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            on_change();
        }
    });
    Ok(WatchGuard {
        _watcher: watcher,
        task,
    })
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A change to one of our files, or to a Kubernetes `..data`-style entry beside them.
fn is_relevant(ev: &notify::Event, names: &HashSet<OsString>) -> bool {
    let kind_matters = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_matters
        && ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_our_files_and_kubernetes_swaps_count() {
        let names: HashSet<OsString> = [OsString::from("switchyard.yaml")].into();
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(is_relevant(
            &event(modify, "/etc/sy/switchyard.yaml"),
            &names
        ));
        assert!(is_relevant(
            &event(EventKind::Create(CreateKind::Any), "/etc/sy/..data"),
            &names
        ));
        assert!(!is_relevant(&event(modify, "/etc/sy/other.yaml"), &names));
        let read = EventKind::Access(AccessKind::Read);
        assert!(!is_relevant(
            &event(read, "/etc/sy/switchyard.yaml"),
            &names
        ));
    }
}
