//! Where rollouts are remembered: an append-only audit journal of every transition
//! (`state_dir/rollouts.jsonl`, one JSON object a line) and the current state of every rollout
//! (`state_dir/rollouts.state.json`, replaced atomically: written to a temp file, synced, renamed).
//! Without `state_dir` rollouts live in memory only and a restart starts them over.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::machine::State;

pub const JOURNAL_FILE: &str = "rollouts.jsonl";
pub const STATE_FILE: &str = "rollouts.state.json";

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

pub struct Journal {
    dir: Option<PathBuf>,
}

impl Journal {
    /// A journal in `dir` (created if missing), or in memory only when `dir` is `None` or cannot
    /// be created (logged).
    pub fn open(dir: Option<&Path>) -> Journal {
        let Some(dir) = dir else {
            return Journal { dir: None };
        };
        match std::fs::create_dir_all(dir) {
            Ok(()) => Journal {
                dir: Some(dir.to_path_buf()),
            },
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create state_dir; rollouts run in memory only and restart from scratch after a restart");
                Journal { dir: None }
            }
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.dir.is_some()
    }

    /// The saved rollouts; none when there is no state file or it cannot be read (logged).
    pub fn load(&self) -> BTreeMap<String, Saved> {
        let Some(path) = self.dir.as_ref().map(|d| d.join(STATE_FILE)) else {
            return BTreeMap::new();
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "unreadable rollout state file; rollouts start over");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the rollout state file; rollouts start over");
                BTreeMap::new()
            }
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
        if let Err(e) = result {
            tracing::warn!(file = %path.display(), error = %e, "cannot append to the rollout journal");
        }
    }

    /// Replaces the state file with `all`, atomically.
    pub fn save(&self, all: &BTreeMap<String, Saved>) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let result = serde_json::to_vec_pretty(all)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = result {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the rollout state file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_the_journal_appends() {
        let dir = std::env::temp_dir().join(format!("switchyard-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let j = Journal::open(Some(&dir));
        assert!(j.load().is_empty());
        let entry = Entry {
            time_ms: 1,
            route: "r".into(),
            from: State::Pending,
            to: State::Progressing { step: 0 },
            reason: "started".into(),
            weights: vec![95, 5],
            generation: 1,
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
        assert_eq!(j.load(), all);
        let lines = std::fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap();
        assert_eq!(lines.lines().count(), 2);
        let back: Entry = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(back, entry);
        assert!(!dir.join(format!("{STATE_FILE}.tmp")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_dir_nothing_is_written() {
        let j = Journal::open(None);
        assert!(!j.is_persistent());
        j.save(&BTreeMap::new());
        assert!(j.load().is_empty());
    }
}
