//! The snapshot: everything the request path reads, built whole by the reloader and swapped in
//! atomically. A request loads it once, so it is routed wholly by one generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::RetryBudget;
use super::fault::RouteFault;
use super::ratelimit::RouteRateLimit;
use super::route::Router;
use super::shadow::ShadowRuntime;
use super::split::Split;
use super::upstream::UpstreamRuntime;
use crate::backend::Backend;
use crate::config::Config;
use crate::config::model::Route;
use crate::stats::{RequestCounters, TargetStats};

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub(crate) router: Router,
    /// Index-aligned with `config.routes` and with the router's answers.
    pub(crate) routes: Vec<RouteRuntime>,
    /// In config order.
    pub(crate) upstreams: Vec<Arc<UpstreamRuntime>>,
}

impl Snapshot {
    pub(crate) fn route(&self, name: &str) -> Option<&RouteRuntime> {
        self.routes.iter().find(|r| &*r.spec.name == name)
    }
}

pub(crate) struct RouteRuntime {
    pub(crate) spec: Arc<Route>,
    /// The weights in force: the config's, or the rollout controller's.
    pub(crate) split: Split,
    /// Index-aligned with `spec.split`.
    pub(crate) targets: Vec<Target>,
    /// Present when the route retries.
    pub(crate) budget: Option<Arc<RetryBudget>>,
    /// Present when the route has a `rate_limit`.
    pub(crate) rate_limit: Option<RouteRateLimit>,
    /// Present when the route has a `fault`.
    pub(crate) fault: Option<RouteFault>,
    /// Present when the route mirrors traffic (`shadow:`).
    pub(crate) shadow: Option<Arc<ShadowRuntime>>,
    pub(crate) seq: AtomicU64,
}

impl RouteRuntime {
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The backend a reference names (references come from this route's own picks).
    pub(crate) fn backend(&self, r: BackendRef) -> &Backend {
        &self.targets[r.target()].upstream.backends[r.index()]
    }
}

/// One upstream of a route's split, with the route's counters for each of its backends.
pub(crate) struct Target {
    pub(crate) upstream: Arc<UpstreamRuntime>,
    /// Index-aligned with `upstream.backends`.
    pub(crate) counters: Vec<Arc<RequestCounters>>,
    /// Responses given when no backend could be picked.
    pub(crate) unassigned: Arc<RequestCounters>,
    pub(crate) stats: Arc<TargetStats>,
}

/// One backend of one of a route's targets: which target, and which backend of its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendRef {
    target: u32,
    index: u32,
}

impl BackendRef {
    pub(crate) fn new(target: usize, index: usize) -> BackendRef {
        // Config validation keeps splits and upstreams far below 2^32 entries.
        BackendRef {
            target: target as u32,
            index: index as u32,
        }
    }

    pub(crate) fn target(self) -> usize {
        self.target as usize
    }

    pub(crate) fn index(self) -> usize {
        self.index as usize
    }
}
