//! The snapshot: everything the request path reads, built whole by the reloader and swapped in
//! atomically. A request loads it once, so it is routed wholly by one generation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::backend::Backend;
use crate::config::Config;
use crate::config::model::{Route, Upstream};
use crate::http::fault::RouteFault;
use crate::http::ratelimit::RouteRateLimit;
use crate::http::route::Router;
use crate::http::shadow::ShadowRuntime;
use crate::http::split::Split;
use crate::stats::{RequestCounters, RetryBudget, ShadowStats, StatsRegistry, TargetStats};

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    /// Index-aligned with `config.routes` and with the router's answers.
    pub routes: Vec<RouteRuntime>,
    /// In config order.
    pub pools: Vec<Arc<Pool>>,
}

impl Snapshot {
    pub fn route(&self, name: &str) -> Option<&RouteRuntime> {
        self.routes.iter().find(|r| &*r.spec.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.spec.name == name)
    }
}

/// One upstream's backends, as this snapshot serves them.
pub struct Pool {
    pub spec: Arc<Upstream>,
    pub backends: Vec<Backend>,
    rr: AtomicUsize,
}

impl Pool {
    pub fn next_rr(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }
}

pub struct RouteRuntime {
    pub spec: Arc<Route>,
    /// The weights in force: the config's, or the rollout controller's.
    pub split: Split,
    /// Index-aligned with `spec.split`.
    pub targets: Vec<Target>,
    /// Present when the route retries.
    pub budget: Option<Arc<RetryBudget>>,
    /// What the route's shadow traffic found (kept across reloads).
    pub shadow_stats: Arc<ShadowStats>,
    /// Present when the route has a `rate_limit`.
    pub rate_limit: Option<RouteRateLimit>,
    /// Present when the route has a `fault`.
    pub fault: Option<RouteFault>,
    /// Present when the route mirrors traffic (`shadow:`).
    pub shadow: Option<Arc<ShadowRuntime>>,
    seq: AtomicU64,
}

impl RouteRuntime {
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// One upstream of a route's split, with the route's counters for each of its backends.
pub struct Target {
    pub pool: Arc<Pool>,
    /// Index-aligned with `pool.backends`.
    pub counters: Vec<Arc<RequestCounters>>,
    /// Responses given when no backend could be picked.
    pub unassigned: Arc<RequestCounters>,
    pub stats: Arc<TargetStats>,
}

/// Builds a snapshot. `weights` overrides a route's configured weights (same length, already
/// checked); `pools` comes from the registry's reconcile.
pub fn build(
    generation: u64,
    config: Arc<Config>,
    pools: &HashMap<Arc<str>, Vec<Backend>>,
    weights: &HashMap<Arc<str>, Vec<u32>>,
    stats: &mut StatsRegistry,
) -> Snapshot {
    let pools: Vec<Arc<Pool>> = config
        .upstreams
        .iter()
        .map(|u| {
            Arc::new(Pool {
                spec: Arc::clone(u),
                backends: pools.get(&u.name).cloned().unwrap_or_default(),
                rr: AtomicUsize::new(0),
            })
        })
        .collect();
    let by_name: HashMap<&str, &Arc<Pool>> = pools.iter().map(|p| (&*p.spec.name, p)).collect();

    let routes = config
        .routes
        .iter()
        .map(|spec| {
            let names: Vec<&str> = spec.split.iter().map(|s| &*s.upstream).collect();
            let configured = spec.weights();
            let live = weights
                .get(&spec.name)
                .filter(|w| w.len() == configured.len())
                .unwrap_or(&configured);
            let targets = spec
                .split
                .iter()
                .filter_map(|s| by_name.get(&*s.upstream))
                .map(|pool| Target {
                    counters: pool
                        .backends
                        .iter()
                        .map(|b| stats.counters(&spec.name, &pool.spec.name, b.state.addr.as_str()))
                        .collect(),
                    unassigned: stats.counters(&spec.name, &pool.spec.name, ""),
                    stats: stats.target(&spec.name, &pool.spec.name),
                    pool: Arc::clone(pool),
                })
                .collect();
            let budget = spec
                .retries
                .as_ref()
                .map(|r| stats.budget(&spec.name, r.budget_percent, r.min_per_second));
            let rate_limit = spec.rate_limit.as_ref().map(|rl| {
                RouteRateLimit::new(
                    rl,
                    stats.rate_state(&spec.name, rl),
                    stats.rate_counts(&spec.name),
                )
            });
            let fault = spec
                .fault
                .as_ref()
                .map(|f| RouteFault::new(f, &names, |u| stats.fault_counts(&spec.name, u)));
            let shadow_stats = stats.shadow(&spec.name);
            let shadow = spec.shadow.as_ref().and_then(|s| {
                let pool = by_name.get(&*s.upstream)?;
                Some(ShadowRuntime::new(
                    &spec.name,
                    s,
                    pool,
                    &shadow_stats,
                    stats,
                ))
            });
            RouteRuntime {
                rate_limit,
                fault,
                split: Split::new(&names, live, spec.sticky.is_some()),
                spec: Arc::clone(spec),
                targets,
                budget,
                shadow_stats,
                shadow,
                seq: AtomicU64::new(0),
            }
        })
        .collect();
    stats.retain_seen();

    Snapshot {
        generation,
        router: Router::new(&config.routes),
        config,
        routes,
        pools,
    }
}
