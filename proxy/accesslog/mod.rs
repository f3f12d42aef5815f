//! The JSON access log: one line per request, written from the request's finished record.
//!
//! - [`entry`]: what a line is made of, owned and compact, filled on the request path.
//! - [`json`]: an entry as a line of JSON (pure, every byte escaped).
//! - `writer`: a thread per target (file or stderr) that batches lines into one write, reopens
//!   the file on request and reports failures sparingly.
//! - [`request_id`]: `x-request-id`, kept or made.
//!
//! The request path never waits for the log: [`Sink::send`] puts an entry on a bounded queue or,
//! when it is full, drops the line and counts it (`switchyard_access_log_dropped_total`). Nor
//! does it wake the writer for every line (a wake is a system call and a thread switch, more
//! than the line itself costs): the writer sleeps until a batch has queued up or the target's
//! `flush_interval` has passed, whichever comes first, like nginx's `buffer=` and `flush=`.
//! [`Logs`] keeps one sink per target, shared by the listeners that name it, across reloads,
//! and at shutdown has every writer write what is queued ([`Logs::close`]).

pub(crate) mod entry;
pub(crate) mod json;
pub(crate) mod request_id;
mod writer;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

use crate::config::access_log::{AccessLog, AccessLogTarget};
pub(crate) use entry::Entry;

/// Lines queued before a sender wakes the writer early (about 60 KB of JSON, one write).
const WAKE_AT: usize = 128;

/// What one target's writer has done, for `/metrics` (kept for the life of the process).
#[derive(Debug, Default)]
pub(crate) struct LogStats {
    pub(crate) lines: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) write_errors: AtomicU64,
}

pub(super) struct SinkState {
    target: AccessLogTarget,
    label: String,
    /// Set by SIGUSR1: the writer reopens its file before its next write.
    reopen: AtomicBool,
    /// Set at shutdown: the writer writes what is queued and stops.
    closing: AtomicBool,
    /// Lines queued since the writer last took the queue (roughly: it may count a line the
    /// writer already took, which only wakes it a little early).
    queued: AtomicUsize,
    /// `queued` at which the sender wakes the writer: [`WAKE_AT`], less for a short queue so it
    /// never fills while the writer sleeps.
    wake_at: usize,
    /// The settings the writer started with: a reload that changes them gets a new writer.
    buffer_lines: usize,
    flush_interval: std::time::Duration,
    stats: Arc<LogStats>,
}

/// The way into one target's queue. Clones share the queue.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: SyncSender<Box<Entry>>,
    state: Arc<SinkState>,
    writer: Thread,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("target", &self.state.label)
            .finish_non_exhaustive()
    }
}

/// A writer thread, kept so shutdown can have it finish.
struct Writer {
    state: Arc<SinkState>,
    handle: JoinHandle<()>,
}

impl Sink {
    /// Opens `spec`'s target (creating the file) and starts its writer; an error names why the
    /// file cannot be opened.
    fn open(spec: &AccessLog, stats: Arc<LogStats>) -> io::Result<(Sink, Writer)> {
        let out = writer::Out::open(&spec.target)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(spec.buffer_lines);
        let state = Arc::new(SinkState {
            label: spec.target.label(),
            target: spec.target.clone(),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            wake_at: (spec.buffer_lines / 2).clamp(1, WAKE_AT),
            buffer_lines: spec.buffer_lines,
            flush_interval: spec.flush_interval,
            stats,
        });
        let for_writer = Arc::clone(&state);
        let every = spec.flush_interval;
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer::run(rx, out, for_writer, every))?;
        let sink = Sink {
            tx,
            state: Arc::clone(&state),
            writer: handle.thread().clone(),
        };
        Ok((sink, Writer { state, handle }))
    }

    /// Queues a line; never waits. A full queue drops it (counted).
    pub(crate) fn send(&self, e: Box<Entry>) {
        match self.tx.try_send(e) {
            Ok(()) => {
                self.state.stats.lines.fetch_add(1, Ordering::Relaxed);
                // Exactly one sender sees the count reach the mark; the others leave the
                // writer asleep until then or until its flush interval ends.
                if self.state.queued.fetch_add(1, Ordering::Relaxed) + 1 == self.state.wake_at {
                    self.writer.unpark();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.state.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn reopen(&self) {
        self.state.reopen.store(true, Ordering::Release);
        self.writer.unpark();
    }

    pub(crate) fn target(&self) -> &AccessLogTarget {
        &self.state.target
    }

    #[cfg(test)]
    pub(crate) fn shares_writer_with(&self, other: &Sink) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

/// A listener's access log: its sink and the name its lines carry.
#[derive(Debug, Clone)]
pub(crate) struct ListenerLog {
    pub(crate) sink: Sink,
    pub(crate) listener: Arc<str>,
}

/// Where one listener logs right now. A listener keeps its slot for life and a reload changes
/// what is in it, so requests on connections opened before the reload follow it too (a
/// keep-alive or HTTP/2 connection can outlive many reloads).
#[derive(Debug, Default)]
pub(crate) struct LogSlot {
    /// Checked first, so a listener that does not log pays one relaxed load per request.
    on: AtomicBool,
    log: arc_swap::ArcSwapOption<ListenerLog>,
}

impl LogSlot {
    pub(crate) fn set(&self, log: Option<ListenerLog>) {
        self.on.store(log.is_some(), Ordering::Release);
        self.log.store(log.map(Arc::new));
    }

    /// The listener's log, when it has one.
    pub(crate) fn get(&self) -> Option<Arc<ListenerLog>> {
        if !self.on.load(Ordering::Acquire) {
            return None;
        }
        self.log.load_full()
    }
}

/// Every access log target in use, one sink each; only the reloader changes the set.
#[derive(Default)]
pub(crate) struct Logs {
    open: Mutex<BTreeMap<AccessLogTarget, Sink>>,
    stats: Mutex<BTreeMap<String, Arc<LogStats>>>,
    /// Every writer not yet finished (those of targets a reload dropped included: they still
    /// write the lines of requests that were in flight).
    writers: Mutex<Vec<Writer>>,
}

impl Logs {
    /// The sink in use for `spec`'s target, or a newly opened one (not yet in use: see
    /// [`Logs::keep`]). A target whose `buffer_lines` or `flush_interval` changed gets a new
    /// writer with them; the old one writes the lines of requests still in flight, then ends
    /// (both append, each batch with one write(2)).
    pub(crate) fn sink(&self, spec: &AccessLog) -> io::Result<Sink> {
        if let Some(s) = lock(&self.open).get(&spec.target)
            && s.state.buffer_lines == spec.buffer_lines
            && s.state.flush_interval == spec.flush_interval
        {
            return Ok(s.clone());
        }
        let stats = Arc::clone(lock(&self.stats).entry(spec.target.label()).or_default());
        let (sink, writer) = Sink::open(spec, stats)?;
        let mut writers = lock(&self.writers);
        writers.retain(|w| !w.handle.is_finished());
        writers.push(writer);
        Ok(sink)
    }

    /// Puts `sinks` in use and lets go of every other (their writers finish once the
    /// requests still holding them end).
    pub(crate) fn keep(&self, sinks: impl IntoIterator<Item = Sink>) {
        let mut open = lock(&self.open);
        open.clear();
        for s in sinks {
            open.insert(s.target().clone(), s);
        }
    }

    /// Asks every writer to reopen its file (SIGUSR1).
    pub(crate) fn reopen(&self) {
        let open = lock(&self.open);
        tracing::info!(files = open.len(), "reopening access logs");
        for s in open.values() {
            s.reopen();
        }
    }

    /// Has every writer write what is queued and stop, and waits until they have (blocking:
    /// a writer stuck on a hung disk or an unread pipe never returns, so callers bound the
    /// wait). Lines sent after this are dropped (counted).
    pub(crate) fn close(&self) {
        let writers = std::mem::take(&mut *lock(&self.writers));
        for w in &writers {
            w.state.closing.store(true, Ordering::Release);
            w.handle.thread().unpark();
        }
        for w in writers {
            if w.handle.join().is_err() {
                tracing::error!(path = %w.state.label, "the access log writer panicked");
            }
        }
    }

    /// (target, statistics) of every target used since start.
    pub(crate) fn stats(&self) -> Vec<(String, Arc<LogStats>)> {
        lock(&self.stats)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent whatever panicked while holding them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(path: &std::path::Path, flush_ms: u64) -> AccessLog {
        AccessLog {
            target: AccessLogTarget::File(path.to_path_buf()),
            buffer_lines: 64,
            flush_interval: Duration::from_millis(flush_ms),
        }
    }

    fn same(a: &Sink, b: &Sink) -> bool {
        a.shares_writer_with(b)
    }

    #[test]
    fn a_reload_that_keeps_a_path_and_its_settings_keeps_its_writer() {
        let dir = tempfile_dir();
        let logs = Logs::default();
        let first = logs.sink(&spec(&dir.join("a.log"), 1000)).unwrap();
        logs.keep([first.clone()]);
        let again = logs.sink(&spec(&dir.join("a.log"), 1000)).unwrap();
        assert!(same(&first, &again));
        logs.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reload_that_changes_a_writers_settings_gets_a_writer_with_them() {
        let dir = tempfile_dir();
        let logs = Logs::default();
        let first = logs.sink(&spec(&dir.join("a.log"), 1000)).unwrap();
        logs.keep([first.clone()]);
        let changed = logs.sink(&spec(&dir.join("a.log"), 50)).unwrap();
        assert!(
            !same(&first, &changed),
            "flush_interval changed, writer kept"
        );
        assert_eq!(changed.state.flush_interval, Duration::from_millis(50));
        let mut bigger = spec(&dir.join("a.log"), 1000);
        bigger.buffer_lines = 128;
        let resized = logs.sink(&bigger).unwrap();
        assert!(!same(&first, &resized), "buffer_lines changed, writer kept");
        logs.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "switchyard-accesslog-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
