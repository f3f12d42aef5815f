//! Stop signals and drain tracking, in the manner of mini-redis: a signal that fires once, and
//! a count of live work that can be awaited down to zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// Fires a [`Stop`] once; dropping the trigger fires it too.
#[derive(Debug)]
pub struct StopTrigger(watch::Sender<bool>);

/// Resolves once its trigger has fired.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

pub fn stop_pair() -> (StopTrigger, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopTrigger(tx), Stop(rx))
}

impl StopTrigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Stop {
        Stop(self.0.subscribe())
    }
}

impl Stop {
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means stop.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// Counts live connections and tunnels.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<TrackerInner>);

#[derive(Debug, Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

/// One unit of tracked work; dropping it ends it.
#[derive(Debug)]
pub struct Token(Arc<TrackerInner>);

impl Tracker {
    pub fn token(&self) -> Token {
        self.0.live.fetch_add(1, Ordering::SeqCst);
        Token(Arc::clone(&self.0))
    }

    pub fn live(&self) -> usize {
        self.0.live.load(Ordering::SeqCst)
    }

    /// Resolves when no token is alive.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_resolves_when_the_last_token_drops() {
        let t = Tracker::default();
        let a = t.token();
        let b = t.token();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait_idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        waiter.await.unwrap();
        assert_eq!(t.live(), 0);
    }

    #[tokio::test]
    async fn stop_fires_for_every_clone() {
        let (trigger, stop) = stop_pair();
        let mut a = stop.clone();
        let mut b = stop;
        trigger.fire();
        a.wait().await;
        b.wait().await;
        assert!(a.is_stopped());
    }
}
