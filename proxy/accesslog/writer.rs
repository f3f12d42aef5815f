//! The thread that writes one access log target. Requests hand it entries through a bounded
//! queue and never wait for it: when the queue is full the line is dropped and counted. It
//! sleeps until a batch has queued up (the sender that completes it wakes it), its flush
//! interval has passed, or it is asked to reopen its file (SIGUSR1, after logrotate moved the
//! old one away) or to stop; then it formats what is queued into one reused buffer and writes
//! it with one call per batch.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::json;
use super::{Entry, SinkState};
use crate::config::access_log::AccessLogTarget;

/// Entries formatted into one write at most.
const BATCH: usize = 512;
/// A failing target is reported in the log at most this often (every failure is counted).
const REPORT_EVERY: Duration = Duration::from_secs(10);

pub(super) enum Out {
    File(File),
    Stderr,
}

impl Out {
    pub(super) fn open(target: &AccessLogTarget) -> io::Result<Out> {
        match target {
            AccessLogTarget::Stderr => Ok(Out::Stderr),
            AccessLogTarget::File(path) => {
                use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
                if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
                    // A blocking open of a FIFO waits for a reader: a reload must not hang on
                    // one. Without a reader this fails at once (ENXIO); with one, the blocking
                    // open below returns at once.
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(path)
                        .map_err(|e| match e.raw_os_error() {
                            Some(libc::ENXIO) => io::Error::other("it is a FIFO no process reads"),
                            _ => e,
                        })?;
                }
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)?;
                let kind = f.metadata()?.file_type();
                if !kind.is_file() && !kind.is_fifo() && !kind.is_char_device() {
                    return Err(io::Error::other("it is not a regular file"));
                }
                Ok(Out::File(f))
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Out::File(f) => f.write_all(buf),
            Out::Stderr => io::stderr().lock().write_all(buf),
        }
    }
}

/// Runs until every sender is gone (the target left the config and the last request that
/// held it ended) or shutdown closes it, writing what was queued before it returns. Between
/// rounds it sleeps at most `every`, so a line waits at most that long to be written.
pub(super) fn run(rx: Receiver<Box<Entry>>, mut out: Out, state: Arc<SinkState>, every: Duration) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut reported: Option<Instant> = None;
    loop {
        // Woken early (unpark) by a full batch, SIGUSR1 or shutdown; a spurious wake-up only
        // makes a round early.
        std::thread::park_timeout(every);
        // Read before draining, so every line queued before shutdown is written.
        let closing = state.closing.load(Ordering::Acquire);
        // Reset before draining: a line queued from here on counts towards the next wake-up.
        state.queued.store(0, Ordering::Relaxed);
        let mut closed = false;
        loop {
            let mut taken = 0;
            while taken < BATCH {
                match rx.try_recv() {
                    Ok(e) => {
                        json::line(&mut buf, &e);
                        taken += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if state.reopen.swap(false, Ordering::AcqRel) {
                reopen(&mut out, &state);
            }
            if !buf.is_empty() {
                write(&mut out, &buf, &state, &mut reported);
                // A burst may have grown the buffer; keep a modest one between bursts.
                buf.clear();
                buf.shrink_to(256 * 1024);
            }
            if taken < BATCH {
                break;
            }
        }
        if closed || closing {
            return;
        }
    }
}

fn reopen(out: &mut Out, state: &SinkState) {
    match Out::open(&state.target) {
        Ok(fresh) => {
            *out = fresh;
            tracing::info!(path = %state.label, "access log reopened");
        }
        Err(e) => {
            state.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %state.label, error = %e, "cannot reopen the access log; writing to the file open before");
        }
    }
}

fn write(out: &mut Out, buf: &[u8], state: &SinkState, reported: &mut Option<Instant>) {
    if let Err(e) = out.write_all(buf) {
        state.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if reported.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
            *reported = Some(now);
            tracing::error!(path = %state.label, error = %e, "cannot write the access log; lines are lost until it works again (counted in switchyard_access_log_write_errors_total)");
        }
    }
}
