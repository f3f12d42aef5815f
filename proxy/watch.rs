//! Watches the directories of files and signals when one of them changes: the config file (for
//! the reloader, through `reload::watcher`) and certificate files (for TLS listeners). It only
//! signals; whoever started the watch decides. It depends on nothing of switchyard, so the
//! layers that use it need not know each other.
//!
//! Directories, not files, are watched: an editor's write-to-temp-and-rename and a Kubernetes
//! ConfigMap update (a new `..2024_…` directory, then the `..data` symlink swapped) both replace
//! the inode a file watch would follow. When the file is a symlink, the directory of its target
//! is watched too, so an edit made there is seen.
//!
//! A watch on a directory ends when the directory does (`rm -rf dir; mkdir dir; cp new dir/`).
//! So the watcher also watches the directory's parent, and after every change it *re-arms*:
//! each directory whose identity (device, inode) changed, or that appeared again, is watched
//! anew. While a directory is missing altogether, it retries every second.
//!
//! The watcher runs on a thread of its own: it stats directories (which can block on a hung
//! mount) and its callbacks may read files (certificates), none of which belongs on a worker.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Events closer together than this are one change (an editor's save is several events).
pub const SETTLE: Duration = Duration::from_millis(150);

/// While a watched directory is missing, how often to look for it again.
const RETRY_MISSING: Duration = Duration::from_secs(1);

/// Keeps the watch alive; dropping it stops watching (without waiting for the thread).
pub struct WatchGuard {
    tx: mpsc::Sender<Msg>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

enum Msg {
    Event(notify::Event),
    Error(notify::Error),
    Stop,
}

/// Starts watching `files` (`what` names them in logs); each settled change calls `on_change`
/// (on the watcher's thread).
pub fn watch_with(
    files: &[PathBuf],
    what: &'static str,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<WatchGuard> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let events = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let _ = events.send(match res {
            Ok(ev) => Msg::Event(ev),
            Err(e) => Msg::Error(e),
        });
    })?;
    let files: Vec<PathBuf> = files
        .iter()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let mut w = Watch {
        watcher,
        files,
        armed: HashMap::new(),
        what,
    };
    // The files' own directories must be watchable at start; their parents are a bonus.
    let wanted = w.wanted();
    for dir in &wanted.dirs {
        let id =
            identity(dir).ok_or_else(|| notify::Error::path_not_found().add_path(dir.clone()))?;
        w.watcher.watch(dir, RecursiveMode::NonRecursive)?;
        w.armed.insert(dir.clone(), id);
        tracing::info!(dir = %dir.display(), what, "watching for changes");
    }
    let mut missing = false;
    for dir in &wanted.parents {
        match identity(dir) {
            Some(id) if w.watcher.watch(dir, RecursiveMode::NonRecursive).is_ok() => {
                w.armed.insert(dir.clone(), id);
            }
            _ => missing = true,
        }
    }
    std::thread::Builder::new()
        .name(format!("switchyard-watch-{what}"))
        .spawn(move || w.run(&rx, on_change, missing))?;
    Ok(WatchGuard { tx })
}

struct Watch {
    watcher: RecommendedWatcher,
    /// Absolute paths of the watched files.
    files: Vec<PathBuf>,
    /// Watched directories and the (device, inode) they had when the watch was set.
    armed: HashMap<PathBuf, (u64, u64)>,
    what: &'static str,
}

/// What to watch for the current state of the file system.
struct Wanted {
    /// Directories holding our files (or their symlinks' targets).
    dirs: Vec<PathBuf>,
    /// Their parents: where a replaced directory reappears.
    parents: Vec<PathBuf>,
    /// Names of our files, by the directory they are in.
    names: HashSet<OsString>,
}

impl Watch {
    fn wanted(&self) -> Wanted {
        let mut dirs = Vec::new();
        let mut names = HashSet::new();
        for f in &self.files {
            names.extend(f.file_name().map(OsString::from));
            dirs.push(parent_dir(f));
            // A symlinked file (not a ConfigMap's `..data/...`): watch where it points too.
            if let Ok(target) = std::fs::canonicalize(f) {
                names.extend(target.file_name().map(OsString::from));
                dirs.push(parent_dir(&target));
            }
        }
        dirs.sort();
        dirs.dedup();
        let mut parents: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .filter(|p| !dirs.contains(p))
            .collect();
        parents.sort();
        parents.dedup();
        Wanted {
            dirs,
            parents,
            names,
        }
    }

    /// Watches every wanted directory whose identity changed since it was watched, and stops
    /// watching those no longer wanted. Returns (whether a watch was set anew, whether a wanted
    /// directory could not be watched).
    /// `gone`: directories seen removed or renamed away, watched anew even if a new directory
    /// got the old one's inode number (tmpfs reuses them at once).
    fn rearm(&mut self, gone: &HashSet<PathBuf>) -> (bool, bool) {
        let wanted = self.wanted();
        let all: Vec<&PathBuf> = wanted.dirs.iter().chain(&wanted.parents).collect();
        let stale: Vec<PathBuf> = self
            .armed
            .keys()
            .filter(|d| !all.contains(d))
            .cloned()
            .collect();
        for d in stale {
            let _ = self.watcher.unwatch(&d);
            self.armed.remove(&d);
        }
        let (mut renewed, mut missing) = (false, false);
        for dir in all {
            let now = identity(dir);
            let before = self.armed.get(dir).copied();
            if now == before && now.is_some() && !gone.contains(dir) {
                continue;
            }
            // The old watch, if the kernel has not ended it already, is of another inode.
            if before.is_some() {
                let _ = self.watcher.unwatch(dir);
                self.armed.remove(dir);
            }
            let ours = wanted.dirs.contains(dir);
            let watched = now.map(|id| (id, self.watcher.watch(dir, RecursiveMode::NonRecursive)));
            match watched {
                Some((id, Ok(()))) => {
                    self.armed.insert(dir.clone(), id);
                    renewed = true;
                    if ours {
                        tracing::info!(dir = %dir.display(), what = self.what, "watching again (the directory was replaced)");
                    }
                }
                Some((_, Err(e))) => {
                    missing = true;
                    if ours {
                        tracing::warn!(dir = %dir.display(), what = self.what, error = %e, "cannot watch; retrying every second");
                    }
                }
                None => missing = true,
            }
        }
        (renewed, missing)
    }

    fn run(mut self, rx: &mpsc::Receiver<Msg>, on_change: impl Fn(), mut missing: bool) {
        let mut gone = HashSet::new();
        loop {
            let wanted = self.wanted();
            gone.clear();
            let first = if missing {
                rx.recv_timeout(RETRY_MISSING)
            } else {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            };
            let changed = match first {
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Msg::Event(ev)) if !is_relevant(&ev, &wanted) => continue,
                Ok(Msg::Event(ev)) => {
                    gone.extend(self.gone(&ev));
                    true
                }
                Ok(Msg::Error(e)) => {
                    tracing::warn!(error = %e, what = self.what, "file watch error");
                    true
                }
                // Time to look for a missing directory again.
                Err(mpsc::RecvTimeoutError::Timeout) => false,
            };
            if changed && !self.settle(rx, &wanted, &mut gone) {
                return;
            }
            let (renewed, now_missing) = self.rearm(&gone);
            missing = now_missing;
            if changed || renewed {
                on_change();
            }
        }
    }
}

impl Watch {
    /// Waits for quiet, so that a burst of events makes one reload of the final file. Only our
    /// events count: a busy parent directory (/tmp) must not put the reload off forever.
    /// False when the watch was stopped meanwhile.
    fn settle(
        &self,
        rx: &mpsc::Receiver<Msg>,
        wanted: &Wanted,
        gone: &mut HashSet<PathBuf>,
    ) -> bool {
        let mut quiet_at = Instant::now() + SETTLE;
        loop {
            match rx.recv_timeout(quiet_at.saturating_duration_since(Instant::now())) {
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Ok(Msg::Event(ev)) if is_relevant(&ev, wanted) => {
                    gone.extend(self.gone(&ev));
                    quiet_at = Instant::now() + SETTLE;
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
            }
        }
    }

    /// Watched directories that `ev` says were removed or renamed away.
    fn gone<'a>(&'a self, ev: &'a notify::Event) -> impl Iterator<Item = PathBuf> + 'a {
        let away = matches!(
            ev.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        );
        ev.paths
            .iter()
            .filter(move |p| away && self.armed.contains_key(*p))
            .cloned()
    }
}

/// A directory's (device, inode): what a watch is really on.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A change to one of our files, to a Kubernetes `..data`-style entry beside them, or to one of
/// the watched directories themselves (removed, created, renamed).
fn is_relevant(ev: &notify::Event, wanted: &Wanted) -> bool {
    let kind_matters = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_matters
        && ev.paths.iter().any(|p| {
            if wanted.dirs.contains(p) {
                return true;
            }
            let in_our_dir = p
                .parent()
                .is_some_and(|d| wanted.dirs.iter().any(|w| w == d));
            in_our_dir
                && p.file_name().is_some_and(|n| {
                    wanted.names.contains(n) || n.to_string_lossy().starts_with("..")
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, RemoveKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_our_files_kubernetes_swaps_and_our_directories_count() {
        let wanted = Wanted {
            dirs: vec![PathBuf::from("/etc/sy")],
            parents: vec![PathBuf::from("/etc")],
            names: [OsString::from("switchyard.yaml")].into(),
        };
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(is_relevant(
            &event(modify, "/etc/sy/switchyard.yaml"),
            &wanted
        ));
        assert!(is_relevant(
            &event(EventKind::Create(CreateKind::Any), "/etc/sy/..data"),
            &wanted
        ));
        assert!(is_relevant(
            &event(EventKind::Create(CreateKind::Folder), "/etc/sy"),
            &wanted
        ));
        assert!(is_relevant(
            &event(EventKind::Remove(RemoveKind::Folder), "/etc/sy"),
            &wanted
        ));
        assert!(!is_relevant(&event(modify, "/etc/sy/other.yaml"), &wanted));
        assert!(
            !is_relevant(&event(modify, "/etc/switchyard.yaml"), &wanted),
            "the same name in the parent directory is not ours"
        );
        assert!(!is_relevant(&event(modify, "/etc/other"), &wanted));
        let read = EventKind::Access(AccessKind::Read);
        assert!(!is_relevant(
            &event(read, "/etc/sy/switchyard.yaml"),
            &wanted
        ));
    }
}
