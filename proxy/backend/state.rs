//! What switchyard knows about one backend. It lives in the registry, outside any snapshot, so
//! it survives every reload that keeps the backend.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::breaker::{Admission, Breaker, BreakerState, Transition, trip_reason};
use crate::config::model::{BackendAddr, BreakerConfig};
use crate::stats::{Buckets, Outcome, Recorder, Tick, Totals, WindowCounts};

/// The window `/status` reports error rates and percentiles over.
pub(crate) const STATS_WINDOW: Duration = Duration::from_secs(10);

pub struct BackendState {
    pub(crate) upstream: Arc<str>,
    pub(crate) addr: BackendAddr,
    in_flight: AtomicU64,
    pub(crate) stats: BackendStats,
    breaker: ArcSwap<BreakerCell>,
    healthy: AtomicBool,
    /// New and not yet checked: out of rotation, panic mode included, until a check passes.
    pending: AtomicBool,
}

/// Latency to the response head, and what each try came to.
pub(crate) struct BackendStats {
    /// Windowed, for `/status` and decisions.
    latency: Recorder,
    /// Cumulative, for `switchyard_upstream_latency_seconds`.
    latency_buckets: Buckets,
    /// Cumulative, by [`Outcome::index`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
    window: WindowCounts,
    /// Times this backend's breaker opened (re-opens from half-open included).
    breaker_opens: AtomicU64,
    /// Requests sent again on a fresh connection after a kept-alive one turned out closed.
    stale_resends: AtomicU64,
    /// Requests sent again after an HTTP/2 backend refused them unprocessed (GOAWAY).
    refused_resends: AtomicU64,
}

impl BackendStats {
    fn new(workers: usize) -> Self {
        BackendStats {
            latency: Recorder::windowed(STATS_WINDOW, workers),
            latency_buckets: Buckets::default(),
            outcomes: Default::default(),
            window: WindowCounts::new(STATS_WINDOW),
            breaker_opens: AtomicU64::new(0),
            stale_resends: AtomicU64::new(0),
            refused_resends: AtomicU64::new(0),
        }
    }

    /// Tries that came to `o`, since the backend appeared.
    pub(crate) fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()].load(Ordering::Relaxed)
    }

    /// Times the breaker opened, since the backend appeared.
    pub(crate) fn breaker_opens(&self) -> u64 {
        self.breaker_opens.load(Ordering::Relaxed)
    }

    /// Requests sent again on a fresh connection because a kept-alive one was closed.
    pub(crate) fn stale_resends(&self) -> u64 {
        self.stale_resends.load(Ordering::Relaxed)
    }

    /// Requests sent again because an HTTP/2 backend refused them unprocessed.
    pub(crate) fn refused_resends(&self) -> u64 {
        self.refused_resends.load(Ordering::Relaxed)
    }

    /// Latencies to the response head over the last [`STATS_WINDOW`].
    pub(crate) fn latency(&self, now: Instant) -> hdrhistogram::Histogram<u64> {
        self.latency.snapshot(now)
    }

    /// Latencies to the response head since the backend appeared, as Prometheus buckets.
    pub(crate) fn latency_buckets(&self) -> &Buckets {
        &self.latency_buckets
    }

    /// Tries and failures over the last [`STATS_WINDOW`].
    pub(crate) fn window(&self, now: Instant) -> Totals {
        self.window.sum(now)
    }
}

impl std::fmt::Debug for BreakerCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerCell")
            .field("state", &self.state())
            .finish()
    }
}

impl std::fmt::Debug for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendState")
            .field("upstream", &self.upstream)
            .field("addr", &self.addr.as_str())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl BackendState {
    pub(crate) fn new(
        upstream: Arc<str>,
        addr: BackendAddr,
        breaker: BreakerConfig,
        workers: usize,
    ) -> Self {
        BackendState {
            upstream,
            addr,
            in_flight: AtomicU64::new(0),
            stats: BackendStats::new(workers),
            breaker: ArcSwap::from_pointee(BreakerCell::new(breaker)),
            healthy: AtomicBool::new(true),
            pending: AtomicBool::new(false),
        }
    }

    /// Requests sent to this backend whose response has not finished streaming.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        if healthy {
            self.pending.store(false, Ordering::Relaxed);
        }
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Out of rotation until its first passing health check (a discovered pod that just
    /// appeared): unlike an unhealthy backend, panic mode does not use it either.
    pub(crate) fn set_pending(&self) {
        self.pending.store(true, Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn breaker(&self) -> arc_swap::Guard<Arc<BreakerCell>> {
        self.breaker.load()
    }

    /// A changed breaker spec starts a fresh breaker; statistics stay.
    pub(crate) fn reconfigure_breaker(&self, cfg: &BreakerConfig) {
        if self.breaker.load().cfg != *cfg {
            self.breaker.store(Arc::new(BreakerCell::new(cfg.clone())));
        }
    }

    /// Asks the breaker to let a try through. A half-open probe comes with its slot in the
    /// ticket, given back if the try ends without a result (its future dropped).
    pub(crate) fn admit(&self, now: Instant) -> Ticket {
        let cell = self.breaker.load_full();
        let (admission, t) = cell.admit(now);
        if let Some(t) = t {
            self.log(&t);
        }
        let cell = (admission == Admission::Probe).then_some(cell);
        Ticket { admission, cell }
    }

    /// Whether the picker may consider this backend (healthy, and its breaker not open).
    pub(crate) fn available(&self, now: Instant) -> bool {
        self.is_healthy() && self.breaker.load().may_admit(now)
    }

    /// Records what one try came to. `ttfb` is the time to the response head, when there was
    /// one. A try whose end says nothing about the backend (the client's doing, or the
    /// proxy's own) is not recorded: its ticket is dropped instead.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        ticket: Ticket,
        ttfb: Option<Duration>,
        now: Instant,
    ) {
        let admission = ticket.settle();
        let tick = Tick::from(now);
        self.stats.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.stats.window.record(tick, outcome.is_failure());
        if let Some(t) = ttfb {
            self.stats.latency.record(t, tick);
            self.stats.latency_buckets.record(t);
        }
        let transition = self
            .breaker
            .load()
            .on_result(admission, outcome.is_failure(), now, tick);
        if let Some(t) = transition {
            if matches!(t, Transition::Opened { .. }) {
                self.stats.breaker_opens.fetch_add(1, Ordering::Relaxed);
            }
            self.log(&t);
        }
    }

    /// A request that met a kept-alive connection the backend had closed goes again on a fresh
    /// one: the backend did nothing wrong, so nothing counts against it but this.
    pub(crate) fn resent_stale(&self) {
        self.stats.stale_resends.fetch_add(1, Ordering::Relaxed);
    }

    /// A request an HTTP/2 backend refused unprocessed (GOAWAY, REFUSED_STREAM) goes again:
    /// counted here, never against the backend.
    pub(crate) fn resent_refused(&self) {
        self.stats.refused_resends.fetch_add(1, Ordering::Relaxed);
    }

    /// Every breaker transition goes to the log, with the upstream and the backend.
    fn log(&self, t: &Transition) {
        let (upstream, backend) = (&*self.upstream, self.addr.as_str());
        match t {
            Transition::Opened { reason, open_for } => {
                tracing::warn!(upstream, backend, %reason, ?open_for, "circuit breaker opened")
            }
            Transition::HalfOpened => {
                tracing::info!(upstream, backend, "circuit breaker half-open: probing")
            }
            Transition::Closed => tracing::info!(upstream, backend, "circuit breaker closed"),
        }
    }
}

/// What the breaker said to one try. Settle it with [`BackendState::record`]; dropped unsettled,
/// a probe's slot goes back to the breaker (a client that hung up says nothing about the
/// backend, and must not leave a half-open breaker waiting forever).
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Admission,
    cell: Option<Arc<BreakerCell>>,
}

impl Ticket {
    #[cfg(test)]
    fn admission(&self) -> Admission {
        self.admission
    }

    /// Refused: the backend takes no try on it.
    pub(crate) fn is_refused(&self) -> bool {
        self.admission == Admission::Rejected
    }

    /// A ticket outside any breaker (panic mode sends tries to backends whatever their breaker).
    pub(crate) fn unchecked() -> Ticket {
        Ticket {
            admission: Admission::Normal,
            cell: None,
        }
    }

    fn settle(mut self) -> Admission {
        self.cell = None;
        self.admission
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            cell.abandon(self.admission);
        }
    }
}

/// Counts one request in flight to a backend until it is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<BackendState>);

impl InFlight {
    pub(crate) fn start(state: &Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A [`Breaker`] for concurrent use. While closed and succeeding, a result is two atomic
/// operations and no lock; the state machine's lock is taken only on failures that trip it and
/// while it is open or half-open (when little traffic reaches the backend anyway).
pub(crate) struct BreakerCell {
    cfg: BreakerConfig,
    mode: AtomicU8,
    open_until: Mutex<Instant>,
    consecutive: AtomicU32,
    window: WindowCounts,
    machine: Mutex<Breaker>,
}

impl BreakerCell {
    pub(crate) fn new(cfg: BreakerConfig) -> Self {
        BreakerCell {
            window: WindowCounts::new(cfg.window),
            cfg,
            mode: AtomicU8::new(CLOSED),
            open_until: Mutex::new(Instant::now()),
            consecutive: AtomicU32::new(0),
            machine: Mutex::new(Breaker::default()),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.mode.load(Ordering::Acquire) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn window(&self, now: Instant) -> Totals {
        self.window.sum(now)
    }

    /// When an open breaker lets the next probe through.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        (self.state() == BreakerState::Open)
            .then(|| *self.open_until.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A cheap look without changing anything: closed, or open long enough to probe, or
    /// half-open (whether a probe slot is free is decided by [`BreakerCell::admit`]).
    pub(crate) fn may_admit(&self, now: Instant) -> bool {
        match self.mode.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.open_until().is_none_or(|until| now >= until),
            _ => true,
        }
    }

    pub(crate) fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        if !self.cfg.enabled || self.mode.load(Ordering::Acquire) == CLOSED {
            return (Admission::Normal, None);
        }
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let result = m.admit(&self.cfg, now);
        self.mirror(&m);
        result
    }

    /// `tick` is `now`, read once for every statistic the result feeds.
    pub(crate) fn on_result(
        &self,
        admission: Admission,
        failed: bool,
        now: Instant,
        tick: Tick,
    ) -> Option<Transition> {
        if !self.cfg.enabled {
            return None;
        }
        if admission == Admission::Probe {
            let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
            let t = m.on_probe_result(&self.cfg, now, failed);
            self.after(&m, &t);
            return t;
        }
        self.window.record(tick, failed);
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let streak = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if self.mode.load(Ordering::Acquire) != CLOSED {
            // A request admitted before the breaker opened: its result is old news.
            return None;
        }
        let counts = self.window.sum(tick);
        trip_reason(&self.cfg, streak, counts)?;
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let t = m.on_closed_failure(&self.cfg, now, streak, counts);
        self.after(&m, &t);
        t
    }

    /// A probe that ended without saying anything about the backend (the client left).
    pub(crate) fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
            m.on_probe_abandoned();
        }
    }

    fn after(&self, m: &Breaker, t: &Option<Transition>) {
        if t.is_some() {
            // A fresh start for whatever comes next: old failures must not re-trip a breaker
            // that just closed, nor count twice towards the next trip.
            self.consecutive.store(0, Ordering::Relaxed);
            self.window.clear();
        }
        self.mirror(m);
    }

    fn mirror(&self, m: &Breaker) {
        if m.state() == BreakerState::Open {
            *self.open_until.lock().unwrap_or_else(|p| p.into_inner()) = m.open_until();
        }
        let mode = match m.state() {
            BreakerState::Closed => CLOSED,
            BreakerState::Open => OPEN,
            BreakerState::HalfOpen => HALF_OPEN,
        };
        self.mode.store(mode, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> BreakerCell {
        BreakerCell::new(BreakerConfig {
            consecutive_failures: 2,
            half_open_requests: 1,
            open_for: Duration::from_secs(5),
            ..BreakerConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_are_counted_for_rollouts() {
        let cfg = BreakerConfig {
            consecutive_failures: 2,
            ..BreakerConfig::default()
        };
        let addr = crate::config::validate::backend_addr("h:1").unwrap();
        let b = BackendState::new("u".into(), addr, cfg, 1);
        for _ in 0..3 {
            let ticket = b.admit(Instant::now());
            b.record(Outcome::ServerError, ticket, None, Instant::now());
        }
        assert_eq!(b.stats.breaker_opens(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cell_mirrors_the_machine_for_lock_free_reads() {
        let c = cell();
        let now = Instant::now();
        assert!(
            c.on_result(Admission::Normal, true, now, Tick::from(now))
                .is_none()
        );
        assert!(matches!(
            c.on_result(Admission::Normal, true, now, Tick::from(now)),
            Some(Transition::Opened { .. })
        ));
        assert_eq!(c.state(), BreakerState::Open);
        assert!(!c.may_admit(Instant::now()));
        // A late result of a request admitted before the trip changes nothing.
        assert!(
            c.on_result(Admission::Normal, true, now, Tick::from(now))
                .is_none()
        );

        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(c.may_admit(Instant::now()));
        let (admission, t) = c.admit(Instant::now());
        assert_eq!(
            (admission, t),
            (Admission::Probe, Some(Transition::HalfOpened))
        );
        assert_eq!(c.admit(Instant::now()).0, Admission::Rejected);
        assert_eq!(
            c.on_result(
                Admission::Probe,
                false,
                Instant::now(),
                Tick::from(Instant::now())
            ),
            Some(Transition::Closed)
        );
        assert_eq!(c.state(), BreakerState::Closed);
        assert_eq!(
            c.window(Instant::now()),
            Totals::default(),
            "old failures are forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_ticket_gives_its_slot_back() {
        let state = BackendState::new(
            Arc::from("u"),
            crate::config::validate::backend_addr("h:1").unwrap(),
            BreakerConfig {
                consecutive_failures: 1,
                half_open_requests: 1,
                open_for: Duration::from_secs(5),
                ..BreakerConfig::default()
            },
            1,
        );
        let ticket = state.admit(Instant::now());
        state.record(Outcome::Reset, ticket, None, Instant::now());
        assert_eq!(state.breaker().state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = state.admit(Instant::now());
        assert_eq!(probe.admission(), Admission::Probe);
        assert!(
            state.admit(Instant::now()).is_refused(),
            "one probe at a time"
        );
        // The client hangs up before the probe's answer: the try's future, ticket and all, is
        // dropped. The slot must come back or the breaker would stay half-open forever.
        drop(probe);
        let again = state.admit(Instant::now());
        assert_eq!(again.admission(), Admission::Probe);
        state.record(Outcome::Success, again, None, Instant::now());
        assert_eq!(state.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_break_the_streak() {
        let c = cell();
        let now = Instant::now();
        c.on_result(Admission::Normal, true, now, Tick::from(now));
        c.on_result(Admission::Normal, false, now, Tick::from(now));
        assert!(
            c.on_result(Admission::Normal, true, now, Tick::from(now))
                .is_none()
        );
        assert_eq!(c.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_opens() {
        let c = BreakerCell::new(BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            assert!(
                c.on_result(
                    Admission::Normal,
                    true,
                    Instant::now(),
                    Tick::from(Instant::now())
                )
                .is_none()
            );
        }
        assert_eq!(c.admit(Instant::now()).0, Admission::Normal);
    }
}
