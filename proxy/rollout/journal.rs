//! Where rollouts are remembered: an append-only audit journal of every transition
//! (`state_dir/rollouts.jsonl`, one JSON object a line) and the current state of every rollout
//! (`state_dir/rollouts.state.json`, replaced atomically: written to a temp file, synced, renamed).
//! Without `state_dir` rollouts live in memory only and a restart starts them over.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::machine::State;

pub const JOURNAL_FILE: &str = "rollouts.jsonl";
pub const STATE_FILE: &str = "rollouts.state.json";
/// Held (flock) by the one process that uses the `state_dir`; says which process that is.
pub const LOCK_FILE: &str = "rollouts.lock";

/// One line of the audit journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time, milliseconds.
    pub time_ms: u64,
    pub route: String,
    pub from: State,
    pub to: State,
    pub reason: String,
    /// The route's split weights after the transition, in split order.
    pub weights: Vec<u32>,
    /// Config generation in force.
    pub generation: u64,
    /// Who wrote the line: `host/pid` (see [`this_process`]).
    #[serde(default)]
    pub writer: String,
}

/// What the state file keeps of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The rollout spec's fingerprint: a different spec at restart starts a new rollout.
    pub fingerprint: String,
    pub state: State,
    /// The latest transitions, oldest first.
    #[serde(default)]
    pub history: Vec<Entry>,
}

/// What [`Journal::load`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// The saved rollouts (none without a state file or a `state_dir`).
    Saved(BTreeMap<String, Saved>),
    /// A state file exists but cannot be trusted; `kept_aside` is where it went.
    Untrusted {
        why: String,
        kept_aside: Option<PathBuf>,
    },
}

/// Whether a file can be created in `dir` (and removed again).
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::File::create(&path)?;
    std::fs::remove_file(&path)
}

/// Renames an untrusted state file to `<name>.untrusted-<unix ms>` (never over another file),
/// so that the next save does not destroy what an operator may want to look at.
fn keep_aside(path: &Path) -> std::io::Result<PathBuf> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(STATE_FILE);
    for n in 0..100u32 {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let aside = path.with_file_name(format!("{name}.untrusted-{ms}{suffix}"));
        // hard_link fails if the target exists: nothing is ever overwritten.
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                std::fs::remove_file(path)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // A file system without hard links: rename, after checking the name is free (the
            // state_dir is ours alone).
            Err(_) if !aside.exists() => {
                std::fs::rename(path, &aside)?;
                return Ok(aside);
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name to keep it aside"))
}

/// Whether rollout transitions reach `state_dir`, and why not: `GET /rollouts`, `/status` and
/// `switchyard_state_dir_persistent` read it.
#[derive(Debug, Default)]
pub struct Persistence {
    path: Option<PathBuf>,
    ok: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Persistence {
    pub fn is_persistent(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// `state_dir` of `/status`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path.as_ref().map(|p| p.display().to_string()),
            "persistent": self.is_persistent(),
            "reason": self.reason.lock().ok().and_then(|r| r.clone()),
        })
    }

    /// Records the outcome of a write; says whether persistence changed.
    fn note(&self, result: Result<(), String>) -> bool {
        let ok = result.is_ok();
        if let Ok(mut reason) = self.reason.lock() {
            *reason = result.err();
        }
        self.ok.swap(ok, Ordering::Relaxed) != ok
    }
}

/// This machine's name (the pod's name in Kubernetes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// This process as journal lines name their writer: `host/pid`.
pub fn this_process() -> String {
    format!("{}/{}", hostname(), std::process::id())
}

/// Another process holds the `state_dir`'s lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "{dir} is in use by another switchyard ({holder}, per its {LOCK_FILE}); give each switchyard its own state_dir (replicas of a fleet share rollouts through `cluster:` instead)"
)]
pub struct InUse {
    pub dir: String,
    pub holder: String,
}

pub struct Journal {
    /// Where files go; kept when it cannot be written, so that every save tries again.
    dir: Option<PathBuf>,
    status: Arc<Persistence>,
    /// `host/pid`, in every journal line.
    writer: String,
    /// The locked lock file, held (and so the lock) as long as the journal lives.
    _lock: Option<std::fs::File>,
    /// Temp files get names of their own.
    tmp_seq: AtomicU64,
}

/// Takes `dir`'s lock. `None` when no lock file can be opened at all (a `state_dir` that cannot
/// be written: nothing is written there, so there is nothing to guard).
fn lock(dir: &Path) -> Result<Option<std::fs::File>, InUse> {
    let path = dir.join(LOCK_FILE);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| std::fs::File::open(&path));
    let Ok(mut file) = opened else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => {
            // Best effort: the lock is what counts, the text only says who holds it.
            let holder = format!(
                "pid {} on {}\n",
                std::process::id(),
                this_process().rsplit_once('/').map_or("", |(h, _)| h)
            );
            let _ = file
                .set_len(0)
                .and_then(|()| file.write_all(holder.as_bytes()));
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            Err(InUse {
                dir: dir.display().to_string(),
                holder: if holder.is_empty() {
                    "a process that did not say which".to_owned()
                } else {
                    holder.to_owned()
                },
            })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot lock state_dir; nothing keeps a second switchyard from using it");
            Ok(Some(file))
        }
    }
}

impl Journal {
    /// A journal in `dir` (created if missing), or in memory only when `dir` is `None` or cannot
    /// be created. A `dir` that cannot be written is reported as not persistent (logged).
    ///
    /// One process at a time: `dir` is locked for as long as the journal lives, and a second
    /// process gets [`InUse`], naming the holder.
    pub fn open(dir: Option<&Path>) -> Result<Journal, InUse> {
        let status = Arc::new(Persistence {
            path: dir.map(Path::to_path_buf),
            ..Persistence::default()
        });
        let journal = |dir: Option<&Path>, lock| Journal {
            dir: dir.map(Path::to_path_buf),
            status: Arc::clone(&status),
            writer: this_process(),
            _lock: lock,
            tmp_seq: AtomicU64::new(0),
        };
        let Some(dir) = dir else {
            status.note(Err(
                "no state_dir: rollouts live in memory and start over after a restart".into(),
            ));
            return Ok(journal(None, None));
        };
        let created =
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create state_dir: {e}"));
        let lock = if created.is_ok() { lock(dir)? } else { None };
        let writable = created
            .and_then(|()| probe(dir).map_err(|e| format!("cannot write in state_dir: {e}")));
        if let Err(why) = &writable {
            tracing::error!(dir = %dir.display(), "{why}; rollout transitions are not saved (switchyard_state_dir_persistent is 0) and a restart does not trust what is there");
        }
        status.note(writable);
        Ok(journal(dir.is_dir().then_some(dir), lock))
    }

    /// `host/pid`: what this journal writes in the `writer` of every line.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    pub fn is_persistent(&self) -> bool {
        self.status.is_persistent()
    }

    /// Whether a `state_dir` is configured (writable or not).
    pub fn has_dir(&self) -> bool {
        self.status.path.is_some()
    }

    pub fn persistence(&self) -> Arc<Persistence> {
        Arc::clone(&self.status)
    }

    /// Records a write's outcome, logging only when persistence is lost or regained.
    fn note(&self, what: &str, result: std::io::Result<()>) {
        let result = result.map_err(|e| format!("cannot write the rollout {what}: {e}"));
        let failed = result.as_ref().err().cloned();
        if self.status.note(result) {
            match failed {
                Some(why) => {
                    tracing::error!(dir = ?self.dir, "{why}; rollout transitions are not saved until it works again")
                }
                None => tracing::info!(dir = ?self.dir, "the rollout state is saved again"),
            }
        }
    }

    /// What the state file holds. A file that cannot be read or parsed is kept aside (renamed,
    /// never overwritten) and reported as [`Loaded::Untrusted`]: the caller fails closed.
    pub fn load(&self) -> Loaded {
        let Some(path) = self.dir.as_ref().map(|d| d.join(STATE_FILE)) else {
            return Loaded::Saved(BTreeMap::new());
        };
        // Only a regular file, and a bounded one: a FIFO or `/dev/zero` there must not wedge
        // start-up (or fill memory); it is untrusted like any file that cannot be read.
        let why = match crate::config::read::read_regular_if_any(&path) {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(saved) => return Loaded::Saved(saved),
                Err(e) => format!("it is not valid rollout state ({e})"),
            },
            Ok(None) => return Loaded::Saved(BTreeMap::new()),
            Err(e) => format!("it cannot be read ({e})"),
        };
        let kept_aside = keep_aside(&path);
        match &kept_aside {
            Ok(aside) => {
                tracing::error!(file = %path.display(), kept_aside = %aside.display(), "the rollout state file could not be read: {why}; it is kept aside and every rollout waits at stable 100 % for an operator")
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "the rollout state file could not be read: {why}; it could not be kept aside either; every rollout waits at stable 100 % for an operator")
            }
        }
        Loaded::Untrusted {
            why,
            kept_aside: kept_aside.ok(),
        }
    }

    /// Appends one transition to the audit journal.
    pub fn append(&self, entry: &Entry) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(JOURNAL_FILE);
        let result = serde_json::to_vec(entry)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push(b'\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?
                    .write_all(&line)
            });
        if let Err(e) = &result {
            tracing::warn!(file = %path.display(), error = %e, "cannot append to the rollout journal");
        }
        self.note("journal", result);
    }

    /// Replaces the state file with `all`, atomically.
    pub fn save(&self, all: &BTreeMap<String, Saved>) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(STATE_FILE);
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{STATE_FILE}.tmp-{}-{n}", std::process::id()));
        let result = serde_json::to_vec_pretty(all)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let written = std::fs::File::create(&tmp).and_then(|mut f| {
                    f.write_all(&bytes)?;
                    f.sync_all()
                });
                let result = written.and_then(|()| std::fs::rename(&tmp, &path));
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result
            });
        if let Err(e) = &result {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the rollout state file");
        }
        self.note("state file", result);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn state_round_trips_and_the_journal_appends() {
        let dir = std::env::temp_dir().join(format!("switchyard-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(Some(&dir)).unwrap();
        assert_eq!(j.load(), Loaded::Saved(BTreeMap::new()));
        let entry = Entry {
            time_ms: 1,
            route: "r".into(),
            from: State::Pending,
            to: State::Progressing { step: 0 },
            reason: "started".into(),
            weights: vec![95, 5],
            generation: 1,
            writer: this_process(),
        };
        j.append(&entry);
        j.append(&entry);
        let mut all = BTreeMap::new();
        all.insert(
            "r".to_owned(),
            Saved {
                fingerprint: "f".into(),
                state: State::Paused { step: 2 },
                history: vec![entry.clone()],
            },
        );
        j.save(&all);
        assert_eq!(j.load(), Loaded::Saved(all.clone()));
        let lines = std::fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap();
        assert_eq!(lines.lines().count(), 2);
        let back: Entry = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(back, entry);
        // No temp file is left behind, and one left by someone else is in nobody's way.
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(".tmp"))
            .count();
        assert_eq!(leftovers, 0);
        std::fs::create_dir(dir.join(format!("{STATE_FILE}.tmp"))).unwrap();
        j.save(&all);
        assert!(j.is_persistent());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_process_at_a_time_holds_a_state_dir() {
        let dir = std::env::temp_dir().join(format!("switchyard-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Journal::open(Some(&dir)).unwrap();
        let Err(in_use) = Journal::open(Some(&dir)) else {
            panic!("a second journal opened a locked state_dir");
        };
        let msg = in_use.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(
            first
                .writer()
                .ends_with(&format!("/{}", std::process::id()))
        );
        drop(first);
        assert!(
            Journal::open(Some(&dir)).is_ok(),
            "free once the first is gone"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_dir_nothing_is_written() {
        let j = Journal::open(None).unwrap();
        assert!(!j.is_persistent());
        j.save(&BTreeMap::new());
        assert_eq!(j.load(), Loaded::Saved(BTreeMap::new()));
        assert_eq!(j.persistence().json()["persistent"], false);
    }

    #[test]
    fn an_unreadable_state_file_is_kept_aside_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("switchyard-aside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(Some(&dir)).unwrap();
        assert!(j.is_persistent());
        std::fs::write(dir.join(STATE_FILE), b"{\"r\": {\"finger").unwrap();
        let Loaded::Untrusted { why, kept_aside } = j.load() else {
            panic!("a truncated file was trusted");
        };
        assert!(why.contains("not valid rollout state"), "{why}");
        let aside = kept_aside.unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"r\": {\"finger");
        assert!(!dir.join(STATE_FILE).exists());
        // A second bad file in the same millisecond gets a name of its own.
        std::fs::write(dir.join(STATE_FILE), b"x").unwrap();
        let Loaded::Untrusted { kept_aside, .. } = j.load() else {
            panic!("garbage was trusted");
        };
        let second = kept_aside.unwrap();
        assert_ne!(second, aside);
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"r\": {\"finger");
        assert_eq!(std::fs::read(&second).unwrap(), b"x");
        // A directory where the file should be cannot be read: untrusted too.
        std::fs::create_dir(dir.join(STATE_FILE)).unwrap();
        assert!(matches!(j.load(), Loaded::Untrusted { .. }));
        // A FIFO nothing writes to (a blocking read would hang here) and `/dev/zero` (a read
        // to the end would never end) are refused at once and kept aside as they are.
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join(STATE_FILE))
            .status()
            .unwrap();
        assert!(made.success());
        let Loaded::Untrusted { why, kept_aside } = j.load() else {
            panic!("a FIFO was trusted");
        };
        assert!(why.contains("is a FIFO"), "{why}");
        assert!(
            kept_aside
                .unwrap()
                .metadata()
                .unwrap()
                .file_type()
                .is_fifo()
        );
        std::os::unix::fs::symlink("/dev/zero", dir.join(STATE_FILE)).unwrap();
        let Loaded::Untrusted { why, .. } = j.load() else {
            panic!("/dev/zero was trusted");
        };
        assert!(why.contains("is a character device"), "{why}");
        assert!(!dir.join(STATE_FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
