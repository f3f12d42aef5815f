//! Stop signals and drain tracking, in the manner of mini-redis: a signal that fires once, and
//! a count of live work that can be awaited down to zero.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// Fires a [`Stop`] once; dropping the trigger fires it too.
#[derive(Debug)]
pub struct StopTrigger(Arc<StopInner>);

/// Resolves once its trigger has fired. Every connection waits on one of these for its whole
/// life, polled at each of its wake-ups: a poll after the first is an atomic load and a waker
/// comparison, no lock.
#[derive(Debug, Clone)]
pub struct Stop(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    fired: AtomicBool,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
}

pub fn stop_pair() -> (StopTrigger, Stop) {
    let inner = Arc::new(StopInner::default());
    (StopTrigger(Arc::clone(&inner)), Stop(inner))
}

impl StopTrigger {
    pub fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        let waiters =
            std::mem::take(&mut *self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    pub fn subscribe(&self) -> Stop {
        Stop(Arc::clone(&self.0))
    }
}

impl Drop for StopTrigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Stop {
    pub fn wait(&mut self) -> Waiting<'_> {
        Waiting {
            inner: &self.0,
            registered: None,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }
}

/// The future of [`Stop::wait`].
pub struct Waiting<'a> {
    inner: &'a StopInner,
    registered: Option<(u64, Waker)>,
}

impl Future for Waiting<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.registered
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        {
            let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
            // A known id means the task's waker changed (rare): the entry is replaced.
            let id = match &self.registered {
                Some((id, _)) => *id,
                None => self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            };
            waiters.insert(id, cx.waker().clone());
            drop(waiters);
            self.registered = Some((id, cx.waker().clone()));
        }
        // Fired while registering: the waker list may already have been taken.
        if self.inner.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.registered.take() {
            let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
            waiters.remove(&id);
        }
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
    async fn a_waiter_registered_before_the_fire_is_woken() {
        let (trigger, stop) = stop_pair();
        let mut s = stop.clone();
        let waiter = tokio::spawn(async move { s.wait().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(trigger);
        waiter.await.unwrap();
        assert!(stop.is_stopped());
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
