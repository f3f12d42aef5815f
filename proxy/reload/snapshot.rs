//! Builds the snapshot the request path reads: the routing tables of one config, with the
//! registry's backends and the keeper's lasting state.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Config;
use crate::routing::fault::RouteFault;
use crate::routing::keeper::Keeper;
use crate::routing::ratelimit::RouteRateLimit;
use crate::routing::shadow::ShadowRuntime;
use crate::routing::{Router, Split, UpstreamRuntime};

// Named here too by code that reads the snapshot it builds.
pub(crate) use crate::routing::Snapshot;
pub(crate) use crate::routing::{RouteRuntime, Target};

/// Builds a snapshot. `weights` overrides a route's configured weights (same length, already
/// checked); `backends` comes from the registry's reconcile.
pub(crate) fn build(
    generation: u64,
    config: Arc<Config>,
    backends: &HashMap<Arc<str>, Vec<Backend>>,
    weights: &HashMap<Arc<str>, Vec<u32>>,
    keep: &mut Keeper,
) -> Snapshot {
    let upstreams: Vec<Arc<UpstreamRuntime>> = config
        .upstreams
        .iter()
        .map(|u| {
            let backends = backends.get(&u.name).cloned().unwrap_or_default();
            Arc::new(UpstreamRuntime::new(Arc::clone(u), backends))
        })
        .collect();
    let by_name: HashMap<&str, &Arc<UpstreamRuntime>> =
        upstreams.iter().map(|u| (&*u.spec.name, u)).collect();

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
                .map(|up| Target {
                    counters: up
                        .backends
                        .iter()
                        .map(|b| keep.counters(&spec.name, &up.spec.name, b.state.addr.as_str()))
                        .collect(),
                    unassigned: keep.counters(&spec.name, &up.spec.name, ""),
                    stats: keep.target(&spec.name, &up.spec.name),
                    upstream: Arc::clone(up),
                })
                .collect();
            let budget = spec
                .retries
                .as_ref()
                .map(|r| keep.budget(&spec.name, r.budget_percent, r.min_per_second));
            let rate_limit = spec.rate_limit.as_ref().map(|rl| {
                RouteRateLimit::new(
                    rl,
                    keep.rate_state(&spec.name, rl),
                    keep.rate_counts(&spec.name),
                )
            });
            let fault = spec
                .fault
                .as_ref()
                .map(|f| RouteFault::new(f, &names, |u| keep.fault_counts(&spec.name, u)));
            let shadow = spec.shadow.as_ref().and_then(|s| {
                let up = by_name.get(&*s.upstream)?;
                Some(ShadowRuntime::new(
                    &spec.name,
                    s,
                    up,
                    keep.shadow(&spec.name, &s.upstream),
                    keep.copies(&spec.name, &s.upstream),
                ))
            });
            RouteRuntime {
                rate_limit,
                fault,
                split: Split::new(&names, live, spec.sticky.is_some()),
                spec: Arc::clone(spec),
                targets,
                budget,
                shadow,
                seq: Default::default(),
            }
        })
        .collect();
    keep.retain_seen();

    Snapshot {
        generation,
        router: Router::new(&config.routes),
        config,
        routes,
        upstreams,
    }
}
