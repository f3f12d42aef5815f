//! Per-connection timers that are re-armed lazily.
//!
//! A tokio timer costs two trips through the runtime's timer lock (arm and cancel); per request
//! and per timeout that was 1.3 µs of CPU in the peers benchmark, and the lock is shared by
//! every connection. Instead each connection owns one long-lived `Sleep` per purpose. Callers
//! state deadlines; the `Sleep` is only moved when it fires before the deadline in force (once
//! per timeout period, not once per request) or is armed later than a new, shorter deadline.

use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A `Sleep` shared by successive deadlines.
pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    /// The waker the `Sleep` last said `Pending` to, while it has not been moved since. The
    /// connection's task polls its timers on every wake (twice or more per request); while the
    /// same task asks again and the `Sleep` has not fired, polling it would only register the
    /// same waker again (about 350 instructions per poll in callgrind).
    waiting: Option<Waker>,
}

impl Default for LazyTimer {
    fn default() -> Self {
        // Far away until first used; not registered with the runtime until first polled.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        LazyTimer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            waiting: None,
        }
    }
}

impl LazyTimer {
    /// Whether the `Sleep` is armed, unfired, and will wake the task `cx` belongs to.
    fn still_waiting(&self, cx: &Context<'_>) -> bool {
        !self.sleep.is_elapsed()
            && self
                .waiting
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// Polls the `Sleep`; remembers the waker when it is pending.
    fn poll_sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let polled = self.sleep.as_mut().poll(cx);
        if polled.is_pending() {
            if !self
                .waiting
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                self.waiting = Some(cx.waker().clone());
            }
        } else {
            self.waiting = None;
        }
        polled
    }

    fn reset(&mut self, at: Instant) {
        self.waiting = None;
        self.sleep.as_mut().reset(at);
    }

    /// Ready once `deadline` has passed; registers `cx` to be woken then.
    pub fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.sleep.deadline() > deadline {
            self.reset(deadline);
        } else if self.still_waiting(cx) {
            // Armed for `deadline` or sooner: it wakes this task, then is looked at again.
            return Poll::Pending;
        }
        loop {
            if self.poll_sleep(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier deadline that no longer matters.
            self.reset(deadline);
        }
    }

    /// Ready when `next()` says the time is up. `next` returns `None` while there is nothing
    /// to time (then the timer re-arms `idle_recheck` from now), or the deadline in force.
    pub fn poll_watch(
        &mut self,
        cx: &mut Context<'_>,
        idle_recheck: Duration,
        next: impl Fn() -> Option<Instant>,
    ) -> Poll<()> {
        if self.still_waiting(cx) {
            return Poll::Pending;
        }
        loop {
            if self.poll_sleep(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let at = match next() {
                Some(d) if d <= now => return Poll::Ready(()),
                Some(d) => d,
                None => now + idle_recheck,
            };
            self.reset(at);
        }
    }

    /// Arms the timer for `at` if it is armed later (used when a connection starts).
    pub fn arm(&mut self, at: Instant) {
        if self.sleep.deadline() > at {
            self.reset(at);
        }
    }
}

/// Whether a connection is between requests, and since when. Lock-free; shared by the
/// connection's watchdog and its requests.
#[derive(Debug)]
pub struct Activity {
    busy: AtomicU32,
    idle_since: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn to_nanos(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(to_nanos(Instant::now())),
        }
    }
}

impl Activity {
    /// Marks a request in progress until the returned token drops.
    pub fn start(self: &std::sync::Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(std::sync::Arc::clone(self))
    }

    /// When the connection will have idled for `limit`, or `None` while a request is open.
    pub fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Acquire);
        Some(epoch() + Duration::from_nanos(since) + limit)
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Busy(std::sync::Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle from now on, if this was the last open request.
        self.0
            .idle_since
            .store(to_nanos(Instant::now()), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_its_time_even_after_earlier_ones() {
        let mut t = LazyTimer::default();
        let start = Instant::now();
        let first = start + Duration::from_secs(10);
        // A first request arms the timer, then finishes long before its deadline.
        let _ = poll_fn(|cx| Poll::Ready(t.poll_deadline(first, cx))).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        // A second request, later deadline: the timer fires at 10 s and re-arms itself.
        let second = start + Duration::from_secs(20);
        poll_fn(|cx| t.poll_deadline(second, cx)).await;
        assert_eq!(Instant::now(), second);
        // A shorter deadline than the one armed pulls the timer in.
        let third = Instant::now() + Duration::from_secs(1);
        t.arm(third + Duration::from_secs(60));
        poll_fn(|cx| t.poll_deadline(third, cx)).await;
        assert_eq!(Instant::now(), third);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_fires_only_after_an_idle_stretch() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_secs(10);
        let mut t = LazyTimer::default();
        t.arm(Instant::now() + limit);
        let start = Instant::now();
        let busy = activity.start();
        // Busy for 25 s: the watch keeps re-checking and does not fire.
        let watch = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                poll_fn(|cx| t.poll_watch(cx, limit, || activity.idle_deadline(limit))).await;
                Instant::now()
            }
        });
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(!watch.is_finished());
        drop(busy);
        let fired = watch.await.unwrap();
        assert!(
            fired >= start + Duration::from_secs(35),
            "{:?}",
            fired - start
        );
        assert!(
            fired <= start + Duration::from_secs(40),
            "{:?}",
            fired - start
        );
    }
}
