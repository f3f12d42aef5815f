//! The thread that writes one access log target. Requests hand it entries through a bounded
//! queue and never wait for it: when the queue is full the line is dropped and counted. It
//! takes what has queued up, formats the batch into one reused buffer and writes it with one
//! call; it reopens its file when asked (SIGUSR1, after logrotate moved the old one away).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::json;
use super::{Msg, SinkState};
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

/// Formats a queued line into the batch's buffer.
fn take(m: Msg, buf: &mut Vec<u8>) {
    if let Msg::Line(e) = m {
        json::line(buf, &e);
    }
}

/// Runs until every sender is gone (the target left the config and the last request that
/// held it ended), writing what was queued before it returns.
pub(super) fn run(rx: Receiver<Msg>, mut out: Out, state: Arc<SinkState>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut reported: Option<Instant> = None;
    loop {
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => return,
        };
        let mut closed = false;
        take(first, &mut buf);
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok(m) => take(m, &mut buf),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if state.reopen.swap(false, Ordering::AcqRel) {
            match Out::open(&state.target) {
                Ok(fresh) => {
                    out = fresh;
                    tracing::info!(path = %state.label, "access log reopened");
                }
                Err(e) => {
                    state.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %state.label, error = %e, "cannot reopen the access log; writing to the file open before");
                }
            }
        }
        if !buf.is_empty() {
            match out.write_all(&buf) {
                Ok(()) => {}
                Err(e) => {
                    state.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if reported.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
                        reported = Some(now);
                        tracing::error!(path = %state.label, error = %e, "cannot write the access log; lines are lost until it works again (counted in switchyard_access_log_write_errors_total)");
                    }
                }
            }
            // A burst may have grown the buffer; keep a modest one between bursts.
            buf.clear();
            buf.shrink_to(256 * 1024);
        }
        if closed {
            return;
        }
    }
}
