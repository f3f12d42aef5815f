//! `GET /metrics`: the Prometheus families named in DESIGN.md.

use std::sync::atomic::Ordering::Relaxed;

use super::AdminCtx;
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

    e.family("switchyard_draining", "gauge", "1 while shutting down.");
    e.sample(
        "switchyard_draining",
        &[],
        u8::from(ctx.shared.is_draining()),
    );

    e.finish()
}
