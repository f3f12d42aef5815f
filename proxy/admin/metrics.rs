//! `GET /metrics`: the Prometheus families named in DESIGN.md.

use std::sync::atomic::Ordering::Relaxed;

use super::AdminCtx;
use crate::reload::snapshot::{RouteRuntime, Snapshot};
use crate::stats::Outcome;
use crate::stats::counters::CODE_CLASSES;
use crate::stats::prometheus::Exposition;

pub fn render(ctx: &AdminCtx) -> String {
    let snap = ctx.shared.snapshot();
    let g = &ctx.shared.counters;
    let mut e = Exposition::default();

    e.family(
        "switchyard_requests_total",
        "counter",
        "Responses to proxied requests by route, upstream, backend and status class.",
    );
    for r in &snap.routes {
        for t in &r.targets {
            let pairs = t
                .pool
                .backends
                .iter()
                .map(|b| b.state.addr.as_str())
                .zip(t.counters.iter())
                .chain(std::iter::once(("", &t.unassigned)));
            for (backend, c) in pairs {
                for (i, class) in CODE_CLASSES.iter().enumerate() {
                    let n = c.get(i);
                    if n > 0 {
                        e.sample(
                            "switchyard_requests_total",
                            &[
                                ("route", &r.spec.name),
                                ("upstream", &t.pool.spec.name),
                                ("backend", backend),
                                ("code_class", class),
                            ],
                            n as f64,
                        );
                    }
                }
            }
        }
    }

    e.family(
        "switchyard_route_weight",
        "gauge",
        "Weight in force for each upstream of a route's split.",
    );
    for r in &snap.routes {
        for (t, w) in r.targets.iter().zip(r.split.weights()) {
            e.sample(
                "switchyard_route_weight",
                &[("route", &r.spec.name), ("upstream", &t.pool.spec.name)],
                *w,
            );
        }
    }

    e.family(
        "switchyard_rollout_step",
        "gauge",
        "Step index of each route's rollout (the number of steps once promoted, -1 once rolled back or aborted).",
    );
    for (route, step) in ctx.rollouts.steps() {
        e.sample("switchyard_rollout_step", &[("route", &route)], step);
    }

    e.family(
        "switchyard_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the last byte of its response, by route and upstream answering.",
    );
    for r in &snap.routes {
        for t in &r.targets {
            e.histogram(
                "switchyard_request_duration_seconds",
                &[("route", &r.spec.name), ("upstream", &t.pool.spec.name)],
                &t.stats.duration,
            );
        }
    }

    e.family(
        "switchyard_upstream_latency_seconds",
        "histogram",
        "Time from sending a try to a backend to its response head.",
    );
    for p in &snap.pools {
        for b in &p.backends {
            e.histogram(
                "switchyard_upstream_latency_seconds",
                &[
                    ("upstream", &p.spec.name),
                    ("backend", b.state.addr.as_str()),
                ],
                &b.state.stats.latency_buckets,
            );
        }
    }

    e.family(
        "switchyard_upstream_outcomes_total",
        "counter",
        "Tries sent to a backend by what became of them (success includes 4xx).",
    );
    for p in &snap.pools {
        for b in &p.backends {
            for o in Outcome::ALL {
                e.sample(
                    "switchyard_upstream_outcomes_total",
                    &[
                        ("upstream", &p.spec.name),
                        ("backend", b.state.addr.as_str()),
                        ("outcome", o.as_str()),
                    ],
                    b.state.stats.outcome(o) as f64,
                );
            }
        }
    }

    e.family(
        "switchyard_breaker_state",
        "gauge",
        "Circuit breaker state per backend: 0 closed, 1 open, 2 half-open.",
    );
    for p in &snap.pools {
        for b in &p.backends {
            e.sample(
                "switchyard_breaker_state",
                &[
                    ("upstream", &p.spec.name),
                    ("backend", b.state.addr.as_str()),
                ],
                b.state.breaker().state().gauge(),
            );
        }
    }

    e.family(
        "switchyard_backend_healthy",
        "gauge",
        "1 while a backend passes its health checks (always 1 without checks).",
    );
    for p in &snap.pools {
        for b in &p.backends {
            e.sample(
                "switchyard_backend_healthy",
                &[
                    ("upstream", &p.spec.name),
                    ("backend", b.state.addr.as_str()),
                ],
                u8::from(b.state.is_healthy()),
            );
        }
    }

    e.family(
        "switchyard_reroutes_total",
        "counter",
        "Requests sent to another upstream of the route because every backend of the one picked was out.",
    );
    for r in &snap.routes {
        for t in &r.targets {
            for (direction, n) in [
                ("away", &t.stats.rerouted_away),
                ("in", &t.stats.rerouted_in),
            ] {
                e.sample(
                    "switchyard_reroutes_total",
                    &[
                        ("route", &r.spec.name),
                        ("upstream", &t.pool.spec.name),
                        ("direction", direction),
                    ],
                    n.load(Relaxed) as f64,
                );
            }
        }
    }

    e.family(
        "switchyard_retries_total",
        "counter",
        "Retries by route and the upstream of the failed try: made, or refused by the retry budget.",
    );
    for r in r_with_retries(&snap) {
        for t in &r.targets {
            for (result, n) in [
                ("attempted", &t.stats.retries),
                ("denied", &t.stats.retries_denied),
            ] {
                e.sample(
                    "switchyard_retries_total",
                    &[
                        ("route", &r.spec.name),
                        ("upstream", &t.pool.spec.name),
                        ("result", result),
                    ],
                    n.load(Relaxed) as f64,
                );
            }
        }
    }

    e.family(
        "switchyard_backend_in_flight",
        "gauge",
        "Requests sent to a backend whose response has not finished.",
    );
    for p in &snap.pools {
        for b in &p.backends {
            e.sample(
                "switchyard_backend_in_flight",
                &[
                    ("upstream", &p.spec.name),
                    ("backend", b.state.addr.as_str()),
                ],
                b.state.in_flight() as f64,
            );
        }
    }

    ctx.shared.discovery.render(&mut e);
    traffic(&mut e, &snap);
    super::shadow::metrics(&snap, &mut e);

    e.family(
        "switchyard_unrouted_requests_total",
        "counter",
        "Requests no route matched (answered 404).",
    );
    e.sample(
        "switchyard_unrouted_requests_total",
        &[],
        g.no_route.load(Relaxed) as f64,
    );

    e.family(
        "switchyard_config_reloads_total",
        "counter",
        "Config reload attempts by result.",
    );
    for (result, n) in [
        ("applied", &g.reloads_applied),
        ("rejected", &g.reloads_rejected),
        ("unchanged", &g.reloads_unchanged),
    ] {
        e.sample(
            "switchyard_config_reloads_total",
            &[("result", result)],
            n.load(Relaxed) as f64,
        );
    }

    g.tls.render(&mut e);

    e.family(
        "switchyard_config_generation",
        "gauge",
        "Successful config loads since start (the first load is 1).",
    );
    e.sample("switchyard_config_generation", &[], snap.generation as f64);

    e.family(
        "switchyard_connections",
        "gauge",
        "Open client connections and upgraded tunnels.",
    );
    e.sample("switchyard_connections", &[], ctx.tracker.live() as f64);

    ctx.shared.limit_stats.render(&mut e);
    ctx.shared.tracer.render(&mut e);

    e.family("switchyard_draining", "gauge", "1 while shutting down.");
    e.sample(
        "switchyard_draining",
        &[],
        u8::from(ctx.shared.is_draining()),
    );

    e.finish()
}

fn r_with_retries(snap: &Snapshot) -> impl Iterator<Item = &RouteRuntime> {
    snap.routes.iter().filter(|r| r.spec.retries.is_some())
}

/// What rate limits and fault injection did, for the routes that have them.
fn traffic(e: &mut Exposition, snap: &Snapshot) {
    e.family(
        "switchyard_rate_limited_total",
        "counter",
        "Requests a route's rate_limit answered with 429.",
    );
    for r in &snap.routes {
        if let Some(limit) = &r.rate_limit {
            e.sample(
                "switchyard_rate_limited_total",
                &[("route", &r.spec.name)],
                limit.counts().limited.load(Relaxed) as f64,
            );
        }
    }
    e.family(
        "switchyard_faults_injected_total",
        "counter",
        "Faults a route's `fault` injected, by the upstream the split picked and kind (delay, abort).",
    );
    for r in &snap.routes {
        let Some(fault) = &r.fault else { continue };
        for (t, counts) in r.targets.iter().zip(fault.counts()) {
            let Some(c) = counts else { continue };
            for (kind, n) in [("delay", &c.delayed), ("abort", &c.aborted)] {
                e.sample(
                    "switchyard_faults_injected_total",
                    &[
                        ("route", &r.spec.name),
                        ("upstream", &t.pool.spec.name),
                        ("kind", kind),
                    ],
                    n.load(Relaxed) as f64,
                );
            }
        }
    }
}
