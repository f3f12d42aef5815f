//! Config loads (the file, the admin token, the certificates, and parsing them) run on a thread
//! of their own, never on a worker: a read that blocks (a hung network mount) would otherwise
//! stall the worker that also serves traffic, the admin API and signals.
//!
//! A load gets [`LOAD_TIMEOUT`]; one that takes longer is abandoned and logged, and the
//! previous config keeps serving. Its thread is left to finish on its own (a blocked read
//! cannot be cancelled) and is never waited for, not even at shutdown. While it is still
//! stuck, further loads are refused at once instead of piling up more stuck threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a config load may take before it is abandoned.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs loads one at a time, each on a fresh thread, each with a deadline.
#[derive(Debug)]
pub struct Loader {
    timeout: Duration,
    /// Set while a load's thread runs, abandoned or not.
    busy: Arc<AtomicBool>,
}

impl Default for Loader {
    fn default() -> Self {
        Loader::with_timeout(LOAD_TIMEOUT)
    }
}

/// Clears the busy flag when the load's thread is done, however it ends.
struct Done {
    busy: Arc<AtomicBool>,
    started: Instant,
    abandoned: Arc<AtomicBool>,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
        if self.abandoned.load(Ordering::Acquire) {
            tracing::warn!(
                after = ?self.started.elapsed(),
                "an abandoned config read finished at last; its result was dropped (reload again to use the file)"
            );
        }
    }
}

impl Loader {
    pub fn with_timeout(timeout: Duration) -> Self {
        Loader {
            timeout,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs `load` on its own thread and waits for it (asynchronously) up to the timeout.
    /// `what` names the load in errors and logs.
    pub async fn run<T: Send + 'static>(
        &self,
        what: &str,
        load: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(format!(
                "an earlier read of {what} has not finished yet (a hung file system?); not starting another"
            ));
        }
        let abandoned = Arc::new(AtomicBool::new(false));
        let done = Done {
            busy: Arc::clone(&self.busy),
            started: Instant::now(),
            abandoned: Arc::clone(&abandoned),
        };
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("switchyard-load".to_owned())
            .spawn(move || {
                let value = load();
                // Not busy before the caller can see the value and start the next load.
                drop(done);
                let _ = tx.send(value);
            });
        if let Err(e) = spawned {
            // The closure (and with it `done`) was dropped: not busy.
            return Err(format!("cannot start a thread to read {what}: {e}"));
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(format!("reading {what} failed (its thread ended early)")),
            Err(_) => {
                abandoned.store(true, Ordering::Release);
                tracing::error!(
                    timeout = ?self.timeout,
                    "reading {what} did not finish in time; abandoned (the previous config keeps serving)"
                );
                Err(format!(
                    "reading {what} did not finish within {:?} (a hung file system?); abandoned",
                    self.timeout
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_load_runs_off_the_calling_thread() {
        let loader = Loader::default();
        let caller = std::thread::current().id();
        let ran_on = loader
            .run("test", move || std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
    }

    /// A load that has answered is over: the next may start at once (a `POST /reload` right
    /// after the first load was refused as "not finished yet").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_that_answered_never_refuses_the_next() {
        let loader = Loader::default();
        for i in 0..2000 {
            assert_eq!(loader.run("the config file", move || i).await, Ok(i));
        }
    }

    #[tokio::test]
    async fn a_stuck_load_is_abandoned_and_refuses_the_next_until_it_ends() {
        let loader = Loader::with_timeout(Duration::from_millis(50));
        // Stands in for a read from a hung mount: blocks its thread until released.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let e = loader
            .run("the config file", move || stuck.recv().is_ok())
            .await
            .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        let e = loader.run("the config file", || 1).await.unwrap_err();
        assert!(e.contains("has not finished yet"), "{e}");

        release.send(()).unwrap();
        // The stuck thread ends on its own; then loads run again.
        let mut ok = None;
        for _ in 0..2000 {
            if let Ok(v) = loader.run("the config file", || 2).await {
                ok = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ok, Some(2));
    }
}
