//! HTTP/2 connections to one backend, each shared by many requests.
//!
//! A backend gets few connections: a request takes the busiest open connection that still has
//! room for a stream (so connections fill up one after the other and idle ones age out), and a
//! new connection is opened only when every open one carries [`MAX_STREAMS`] requests. Opening
//! is serialised per backend, so that a burst arriving at a cold pool shares the one connection
//! being opened instead of opening one each; it shares a failed open too: a request that waited
//! while an open failed fails with it at once (and moves on to another backend) instead of
//! waiting out a connect timeout of its own after it. A connection leaves the pool when it closes, when
//! the backend sends GOAWAY (seen as a request on it failing as refused), or after
//! `idle_timeout` without a request: a task per backend, running while it has connections,
//! closes those that sat idle that long.
//!
//! Only the pool holds a connection's sender for long: a request clones it, hands itself over
//! and drops the clone at once. When the connection's task ends, its entry (the last sender)
//! is dropped right then. That matters because hyper's request queue outlives the connection
//! for as long as any sender does: a request queued in the instant the connection's task was
//! ending lands in a queue nobody reads, and only when the last sender goes is it handed back
//! (unsent, with its request) to be sent again. No request waits for a timer to find that out.
//!
//! hyper does not expose the backend's SETTINGS_MAX_CONCURRENT_STREAMS; a connection whose
//! backend allows fewer than [`MAX_STREAMS`] queues the excess inside hyper until a stream
//! frees up (a wait, never a failure).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::client::conn::http2;
use tokio::time::Instant;

use crate::body::ReqBody;

/// Requests one connection carries at once before another is opened: the smallest limit
/// RFC 9113 (5.1.2) recommends a server allow, and what most servers advertise.
pub(crate) const MAX_STREAMS: usize = 100;

pub(crate) type H2Sender = http2::SendRequest<ReqBody>;

/// What drives one connection (hyper's connection future): it ends when the connection does.
pub(crate) type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One HTTP/2 connection's count of the requests it carries.
pub(crate) struct Shared {
    streams: AtomicUsize,
    /// When the last request on it ended, in milliseconds after the pool's epoch.
    idle_since_ms: AtomicU64,
    /// Refused a request (GOAWAY): no new requests, whatever hyper says.
    retired: std::sync::atomic::AtomicBool,
    epoch: Instant,
}

/// A connection in the pool: its count and the sender that keeps its request queue open.
struct Entry {
    conn: Arc<Shared>,
    sender: H2Sender,
}

impl Entry {
    /// Still open, and in use or idle for less than `idle_timeout` at `now_ms`.
    fn keep(&self, now_ms: u64, idle_timeout: std::time::Duration) -> bool {
        let c = &self.conn;
        !c.retired.load(Ordering::Relaxed)
            && !self.sender.is_closed()
            && (c.streams.load(Ordering::Acquire) > 0
                || now_ms.saturating_sub(c.idle_since_ms.load(Ordering::Relaxed))
                    < idle_timeout.as_millis() as u64)
    }
}

/// A stream on a shared connection: the sender to hand the request to (drop it as soon as the
/// request is handed over; see the module docs) and the stream's place on the connection.
pub(crate) struct Lease {
    pub(crate) sender: H2Sender,
    pub(crate) stream: Stream,
}

/// A stream counted on its connection, held until the response has been read (or dropped).
pub(crate) struct Stream {
    conn: Arc<Shared>,
}

impl Stream {
    /// The backend refused a request on this connection (GOAWAY): it takes no more.
    pub(crate) fn retire(&self) {
        self.conn.retired.store(true, Ordering::Relaxed);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let c = &self.conn;
        // Before the count drops: whoever sees no streams must see this idle start, not one
        // from before a busy spell longer than idle_timeout (it would close a connection just
        // used). A connection still carrying streams ignores it (see Entry::keep).
        let ms = c.epoch.elapsed().as_millis() as u64;
        c.idle_since_ms.store(ms, Ordering::Relaxed);
        c.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

type Open = Mutex<Vec<Entry>>;

/// The HTTP/2 connections of one backend.
pub(crate) struct Conns {
    open: Arc<Open>,
    /// The task closing idle connections runs.
    sweeping: Arc<std::sync::atomic::AtomicBool>,
    /// Held while a connection is being opened.
    opening: tokio::sync::Mutex<()>,
    /// Opens that failed so far, and how the last one failed.
    failures: AtomicU64,
    last_failure: Mutex<Option<OpenFailure>>,
    epoch: Instant,
}

/// How an open failed, kept to fail the requests that waited for it the same way.
#[derive(Clone)]
struct OpenFailure {
    os: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl OpenFailure {
    fn error(&self) -> io::Error {
        match self.os {
            // The OS error itself, so that a shortage (EMFILE...) is still told apart.
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

/// The right to open a connection to the backend, held while opening it.
pub(crate) struct Opening<'a> {
    conns: &'a Conns,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl Opening<'_> {
    /// The open failed: requests waiting for their turn fail the same way.
    pub(crate) fn failed(self, e: &io::Error) {
        let failure = OpenFailure {
            os: e.raw_os_error(),
            kind: e.kind(),
            message: e.to_string(),
        };
        if let Ok(mut last) = self.conns.last_failure.lock() {
            *last = Some(failure);
        }
        self.conns.failures.fetch_add(1, Ordering::AcqRel);
    }
}

impl Conns {
    pub(crate) fn new() -> Conns {
        Conns {
            open: Arc::new(Mutex::new(Vec::new())),
            sweeping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            opening: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    /// A stream on an open connection with room, if there is one. Connections that closed,
    /// were retired or sat idle past `idle_timeout` at `now` are dropped on the way.
    pub(crate) fn lease(&self, now: Instant, idle_timeout: std::time::Duration) -> Option<Lease> {
        let mut open = self.open.lock().ok()?;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        open.retain(|e| e.keep(now_ms, idle_timeout));
        // The busiest connection with room: fill one before using the next.
        let best = open
            .iter()
            .filter(|e| e.conn.streams.load(Ordering::Acquire) < MAX_STREAMS)
            .max_by_key(|e| e.conn.streams.load(Ordering::Acquire))?;
        best.conn.streams.fetch_add(1, Ordering::AcqRel);
        Some(Lease {
            sender: best.sender.clone(),
            stream: Stream {
                conn: Arc::clone(&best.conn),
            },
        })
    }

    /// Waits for the right to open a connection; whoever holds it first looks again with
    /// [`Conns::lease`] (another request may just have opened one with room). If an open failed
    /// while this one waited, this one fails with it: with a backend that does not answer, the
    /// k-th request of a burst would otherwise wait k connect timeouts before failing over.
    pub(crate) async fn opening(&self) -> Result<Opening<'_>, io::Error> {
        let failures = self.failures.load(Ordering::Acquire);
        let turn = self.opening.lock().await;
        if self.failures.load(Ordering::Acquire) != failures {
            let failure = self.last_failure.lock().ok().and_then(|f| f.clone());
            return Err(failure.map_or_else(
                || io::Error::other("opening a connection failed"),
                |f| f.error(),
            ));
        }
        Ok(Opening {
            conns: self,
            _turn: turn,
        })
    }

    /// Adds a newly opened connection, with one stream taken for the request that opened it;
    /// starts its `driver`, which drops the connection from the pool as it ends, and the task
    /// that closes idle connections if it is not running.
    pub(crate) fn add(
        &self,
        sender: H2Sender,
        driver: Driver,
        idle_timeout: std::time::Duration,
    ) -> Lease {
        let conn = Arc::new(Shared {
            streams: AtomicUsize::new(1),
            idle_since_ms: AtomicU64::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
            epoch: self.epoch,
        });
        let lease = Lease {
            sender: sender.clone(),
            stream: Stream {
                conn: Arc::clone(&conn),
            },
        };
        if let Ok(mut open) = self.open.lock() {
            open.push(Entry {
                conn: Arc::clone(&conn),
                sender,
            });
        }
        tokio::spawn(drive(driver, Arc::downgrade(&self.open), conn));
        // After the push: a task that found the pool empty has cleared the flag under the lock.
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(
                Arc::downgrade(&self.open),
                Arc::clone(&self.sweeping),
                idle_timeout,
                self.epoch,
            ));
        }
        lease
    }

    /// Connections in the pool now (as the last look left them: nothing is dropped here).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }
}

/// Runs a connection; as it ends, drops its entry, and with it the connection's last sender
/// but those of requests being handed over this instant (see the module docs).
async fn drive(driver: Driver, open: std::sync::Weak<Open>, conn: Arc<Shared>) {
    driver.await;
    if let Some(open) = open.upgrade()
        && let Ok(mut open) = open.lock()
    {
        open.retain(|e| !Arc::ptr_eq(&e.conn, &conn));
    }
}

/// Closes the connections that sat idle for `idle_timeout` (dropping the last sender of a
/// connection makes hyper close it with a GOAWAY), waking when the next one would be due. Ends
/// when the backend has no connection left or its pool is gone.
async fn sweep(
    open: std::sync::Weak<Open>,
    sweeping: Arc<std::sync::atomic::AtomicBool>,
    idle_timeout: std::time::Duration,
    epoch: Instant,
) {
    loop {
        let Some(conns) = open.upgrade() else {
            return;
        };
        let now = Instant::now();
        let next = {
            let Ok(mut open) = conns.lock() else {
                return;
            };
            let now_ms = now.saturating_duration_since(epoch).as_millis() as u64;
            open.retain(|e| e.keep(now_ms, idle_timeout));
            if open.is_empty() {
                sweeping.store(false, Ordering::Release);
                return;
            }
            // The earliest an idle one can be due; a busy one, not before a full timeout.
            open.iter()
                .map(|e| &e.conn)
                .filter(|c| c.streams.load(Ordering::Acquire) == 0)
                .map(|c| {
                    epoch
                        + std::time::Duration::from_millis(c.idle_since_ms.load(Ordering::Relaxed))
                        + idle_timeout
                })
                .min()
                .map_or(now + idle_timeout, |due| {
                    due.max(now + std::time::Duration::from_millis(1))
                })
        };
        drop(conns);
        tokio::time::sleep_until(next).await;
    }
}
