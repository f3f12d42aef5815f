//! What discovery shows: for each discovered upstream its name, its last lookup and what came
//! of it, lookups by result, how many backends are in force and which removed ones are still
//! draining; and whether start-up discovery is done (`/readyz`). Written by the discovery tasks
//! and the reloader, read by the admin API; never touched by the request path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::resolve::Outcome;
use crate::backend::BackendState;

/// Every discovered upstream's [`Watch`], and the start-up latch.
#[derive(Default)]
pub struct Board {
    watches: Mutex<BTreeMap<Arc<str>, Arc<Watch>>>,
    ready: AtomicBool,
}

/// How a lookup ended, as counted and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// Addresses.
    Ok,
    /// An answer with none (no such name, no A or AAAA records): the last set stays.
    Empty,
    /// No answer, or an error answer: the last set stays.
    Error,
}

impl LookupResult {
    pub const ALL: [LookupResult; 3] = [LookupResult::Ok, LookupResult::Empty, LookupResult::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Ok => "ok",
            LookupResult::Empty => "empty",
            LookupResult::Error => "error",
        }
    }

    fn of(outcome: &Outcome) -> LookupResult {
        match outcome {
            Outcome::Addrs { .. } => LookupResult::Ok,
            Outcome::Empty => LookupResult::Empty,
            Outcome::Failed(_) => LookupResult::Error,
        }
    }
}

/// One discovered upstream, as the admin API sees it.
pub struct Watch {
    dns: String,
    refresh: Duration,
    /// By [`LookupResult`], in `ALL`'s order.
    lookups: [AtomicU64; 3],
    /// Backends in the set in force.
    in_force: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A server has answered (addresses, or that there are none).
    answered: bool,
    last: Option<Last>,
    next_at: Option<Instant>,
    /// Backends dropped from the set while requests to them were still in flight.
    draining: Vec<Arc<BackendState>>,
}

struct Last {
    at: Instant,
    outcome: Outcome,
}

impl Watch {
    pub fn new(dns: &str, refresh: Duration) -> Watch {
        Watch {
            dns: dns.to_owned(),
            refresh,
            lookups: Default::default(),
            in_force: AtomicUsize::new(0),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lookup ended with `outcome`; the next one is due in `next`.
    pub fn record(&self, outcome: &Outcome, next: Duration) {
        let result = LookupResult::of(outcome);
        self.lookups[result as usize].fetch_add(1, Relaxed);
        let now = Instant::now();
        let mut st = self.state();
        st.answered |= result != LookupResult::Error;
        st.last = Some(Last {
            at: now,
            outcome: outcome.clone(),
        });
        st.next_at = Some(now + next);
    }

    pub fn lookups(&self, result: LookupResult) -> u64 {
        self.lookups[result as usize].load(Relaxed)
    }

    /// Backends in the set in force.
    pub fn in_force(&self) -> usize {
        self.in_force.load(Relaxed)
    }

    pub fn answered(&self) -> bool {
        self.state().answered
    }

    pub(super) fn set_in_force(&self, n: usize) {
        self.in_force.store(n, Relaxed);
    }

    /// Backends just dropped from the set: shown as draining while requests are in flight.
    pub(super) fn draining(&self, removed: impl IntoIterator<Item = Arc<BackendState>>) {
        let mut st = self.state();
        st.draining.retain(|b| b.in_flight() > 0);
        st.draining
            .extend(removed.into_iter().filter(|b| b.in_flight() > 0));
    }

    fn json(&self, now: Instant) -> Value {
        let mut st = self.state();
        st.draining.retain(|b| b.in_flight() > 0);
        let last = st.last.as_ref().map(|l| {
            let (addresses, ttl, error) = match &l.outcome {
                Outcome::Addrs { ips, ttl } => (ips.len(), Some(ttl.as_secs()), None),
                Outcome::Empty => (0, None, None),
                Outcome::Failed(why) => (0, None, Some(why.as_str())),
            };
            json!({
                "result": LookupResult::of(&l.outcome).as_str(),
                "ms_ago": now.saturating_duration_since(l.at).as_millis() as u64,
                "addresses": addresses,
                "ttl_seconds": ttl,
                "error": error,
            })
        });
        json!({
            "dns": self.dns,
            "refresh_ms": self.refresh.as_millis() as u64,
            "answered": st.answered,
            "backends": self.in_force.load(Relaxed),
            "last_lookup": last,
            "next_lookup_in_ms": st.next_at.map(|t| t.saturating_duration_since(now).as_millis() as u64),
            "lookups": LookupResult::ALL.iter()
                .map(|r| (r.as_str().to_owned(), json!(self.lookups(*r))))
                .collect::<serde_json::Map<_, _>>(),
            "draining": st.draining.iter()
                .map(|b| json!({ "address": b.addr.as_str(), "in_flight": b.in_flight() }))
                .collect::<Vec<_>>(),
        })
    }
}

impl Board {
    fn watches(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Arc<Watch>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, watches: BTreeMap<Arc<str>, Arc<Watch>>) {
        *self.watches() = watches;
        self.check_ready();
    }

    pub fn watch(&self, upstream: &str) -> Option<Arc<Watch>> {
        self.watches().get(upstream).cloned()
    }

    /// Start-up discovery is done once every discovered upstream has had an answer (addresses,
    /// or that there are none); from then on it stays done, so that neither a DNS outage nor a
    /// reload adding an upstream takes a serving replica out of rotation.
    pub fn ready(&self) -> bool {
        self.ready.load(Relaxed) || self.check_ready()
    }

    pub(super) fn check_ready(&self) -> bool {
        let done = self.watches().values().all(|w| w.answered());
        if done {
            self.ready.store(true, Relaxed);
        }
        done
    }

    /// Upstreams still waiting for their first answer.
    pub fn waiting(&self) -> Vec<Arc<str>> {
        self.watches()
            .iter()
            .filter(|(_, w)| !w.answered())
            .map(|(name, _)| Arc::clone(name))
            .collect()
    }

    /// `/status`'s `discovery` of one upstream; null when it does not discover.
    pub fn status(&self, upstream: &str) -> Value {
        self.watch(upstream)
            .map_or(Value::Null, |w| w.json(Instant::now()))
    }

    /// Every discovered upstream's watch, by name.
    pub fn all(&self) -> Vec<(Arc<str>, Arc<Watch>)> {
        let watches = self.watches();
        watches
            .iter()
            .map(|(u, w)| (u.clone(), w.clone()))
            .collect()
    }
}
