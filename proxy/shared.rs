//! What every task reads: the current snapshot, process-wide counters, and the lifecycle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::discovery::board::Board;
use crate::routing::Snapshot;
use crate::stats::GlobalCounters;
use crate::stats::limits::LimitStats;

pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub(crate) counters: GlobalCounters,
    /// `switchyard_limit_rejections_total`, by listener.
    pub(crate) limit_stats: LimitStats,
    /// What DNS discovery found and how its lookups went (`/status`, `/metrics`, `/readyz`).
    pub(crate) discovery: Arc<Board>,
    draining: AtomicBool,
    /// Bumped after every reload attempt; lets callers wait for one without polling.
    reloads: watch::Sender<ReloadEvent>,
    /// (name, address) of the running listeners; read by the admin API only.
    listeners: Mutex<Vec<(String, SocketAddr)>>,
}

/// The outcome of the latest reload attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadEvent {
    /// Generation in force after the attempt.
    pub generation: u64,
    /// Attempts so far, whatever their outcome.
    pub attempts: u64,
    pub rejected: u64,
}

impl Shared {
    pub(crate) fn new(first: Snapshot) -> Self {
        let generation = first.generation;
        Shared {
            snapshot: ArcSwap::from_pointee(first),
            counters: GlobalCounters::default(),
            limit_stats: LimitStats::default(),
            discovery: Arc::default(),
            draining: AtomicBool::new(false),
            reloads: watch::Sender::new(ReloadEvent {
                generation,
                attempts: 0,
                rejected: 0,
            }),
            listeners: Mutex::default(),
        }
    }

    /// The snapshot in force. Load it once per request and keep it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Only the reloader calls this.
    pub(crate) fn publish(&self, next: Snapshot) {
        self.snapshot.store(Arc::new(next));
    }

    pub(crate) fn note_reload(&self, rejected: bool) {
        let generation = self.snapshot.load().generation;
        self.reloads.send_modify(|e| {
            e.generation = generation;
            e.attempts += 1;
            e.rejected += u64::from(rejected);
        });
    }

    pub fn reload_events(&self) -> watch::Receiver<ReloadEvent> {
        self.reloads.subscribe()
    }

    pub(crate) fn set_listener_addrs(&self, addrs: Vec<(String, SocketAddr)>) {
        if let Ok(mut l) = self.listeners.lock() {
            *l = addrs;
        }
    }

    pub(crate) fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
