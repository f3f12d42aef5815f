//! Bounding every wait on a socket (nginx's client_header, proxy_read and send timeouts are
//! 60 s each), three ways, so that what the bound costs can be measured:
//! - `Tokio`: `tokio::time::timeout` around each wait that blocks (a timer-wheel entry armed
//!   and removed per wait, clock reads as the driver parks);
//! - `Coarse`: as nginx's cached clock makes it cheap: a wait that blocks stores "now + 60 s"
//!   (now from a per-second tick, no clock read) in its connection's deadline; a sweeper thread
//!   ticks once a second and aborts the connections whose wait is past its deadline. The
//!   runtime then runs without tokio's time driver, whose work at every park is most of what
//!   `Tokio` costs;
//! - `Off`: no bound.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::task::AbortHandle;

const LIMIT: Duration = Duration::from_secs(60);
/// A deadline no tick reaches: the connection is not waiting.
const NOT_WAITING: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Tokio,
    Coarse,
    Off,
}

/// Seconds since the sweeper started, one tick a second.
static NOW: AtomicU64 = AtomicU64::new(0);

/// The connections under `Coarse`: their deadline and how to end them. Locked once per
/// connection and once per tick, never per request.
static WATCHED: Mutex<Vec<(Arc<AtomicU64>, AbortHandle)>> = Mutex::new(Vec::new());

/// One connection's bound on its waits.
#[derive(Clone)]
pub(crate) struct Timer {
    mode: Mode,
    deadline: Arc<AtomicU64>,
}

impl Timer {
    pub(crate) fn new(mode: Mode) -> Self {
        Timer {
            mode,
            deadline: Arc::new(AtomicU64::new(NOT_WAITING)),
        }
    }

    /// Under `Coarse`, the sweeper must know the connection's task: call with its handle.
    pub(crate) fn watch(&self, task: AbortHandle) {
        if self.mode == Mode::Coarse {
            watched().push((self.deadline.clone(), task));
        }
    }

    /// `f`, bounded.
    pub(crate) async fn timed<T>(&self, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        let mut f = pin!(f);
        match self.mode {
            Mode::Off => f.await,
            // Two stores: cheaper than finding out whether the wait will block.
            Mode::Coarse => {
                self.deadline
                    .store(NOW.load(Relaxed) + LIMIT.as_secs(), Relaxed);
                let r = f.await;
                self.deadline.store(NOT_WAITING, Relaxed);
                r
            }
            // Armed only when `f` has to wait: a write the socket takes at once, or a read of
            // bytes already there, touches no timer.
            Mode::Tokio => {
                if let Poll::Ready(r) = poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
                    return r;
                }
                tokio::time::timeout(LIMIT, f)
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            }
        }
    }
}

/// Starts the `Coarse` sweeper: a thread that ticks the clock once a second and ends the
/// connections whose wait has passed its deadline (they close without an answer; nginx would
/// send 504 for a backend that is too slow).
pub(crate) fn start_sweeper() -> io::Result<()> {
    std::thread::Builder::new()
        .name("floor-sweeper".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                tick();
            }
        })
        .map(drop)
}

fn tick() {
    let now = NOW.fetch_add(1, Relaxed) + 1;
    watched().retain(|(deadline, task)| {
        if task.is_finished() {
            return false;
        }
        if deadline.load(Relaxed) <= now {
            task.abort();
            return false;
        }
        true
    });
}

fn watched() -> std::sync::MutexGuard<'static, Vec<(Arc<AtomicU64>, AbortHandle)>> {
    // The list stays valid whatever a panicking holder was doing: entries are only added or
    // removed whole.
    WATCHED.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_forever() -> io::Result<()> {
        std::future::pending().await
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_mode_times_a_blocked_wait_out() {
        let t = Timer::new(Mode::Tokio);
        let start = tokio::time::Instant::now();
        let err = t.timed(wait_forever()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), LIMIT);
        assert_eq!(t.timed(async { Ok(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn coarse_mode_ends_a_connection_stuck_past_its_deadline_only() {
        let stuck = Timer::new(Mode::Coarse);
        let t = stuck.clone();
        let task = tokio::spawn(async move { t.timed(wait_forever()).await });
        stuck.watch(task.abort_handle());
        // Busy elsewhere (not in a timed wait) for longer than the limit: left alone.
        let (go, went) = tokio::sync::oneshot::channel::<()>();
        let busy = Timer::new(Mode::Coarse);
        let t = busy.clone();
        let working = tokio::spawn(async move {
            let _ = went.await;
            t.timed(async { Ok(7) }).await
        });
        busy.watch(working.abort_handle());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }

        for _ in 1..LIMIT.as_secs() {
            tick();
        }
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "ended before its deadline");
        tick();
        tick();
        assert!(task.await.unwrap_err().is_cancelled());
        go.send(()).unwrap();
        assert_eq!(working.await.unwrap().unwrap(), 7);
    }
}
