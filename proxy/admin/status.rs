//! `GET /status`: what is in force right now, as JSON.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::AdminCtx;
use crate::backend::state::STATS_WINDOW;
use crate::config::model::{GrpcCodes, HostMatch, StickyKey};
use crate::routing::UpstreamRuntime;
use crate::stats::counters::CODE_CLASSES;
use crate::stats::histogram::new_histogram;
use crate::stats::{Outcome, Percentiles, RequestCounters, Totals};

pub async fn render(ctx: &AdminCtx) -> Value {
    let mut v = render_local(ctx);
    if let Some(fleet) = &ctx.fleet {
        v["fleet"] = fleet.status().await;
    }
    v
}

fn render_local(ctx: &AdminCtx) -> Value {
    let snap = ctx.shared.snapshot();
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            let spec = &r.spec;
            let split: Vec<Value> = r
                .targets
                .iter()
                .zip(&spec.split)
                .zip(r.split.weights())
                .map(|((t, configured), live)| {
                    let mut all = t.counters.iter().map(AsRef::as_ref).collect::<Vec<_>>();
                    all.push(&t.unassigned);
                    let c = t.stats.read();
                    json!({
                        "upstream": &*t.upstream.spec.name,
                        "weight": live,
                        "configured_weight": configured.weight,
                        "responses": by_class(&all),
                        "rerouted_away": c.rerouted_away,
                        "rerouted_in": c.rerouted_in,
                        "retries": c.retries,
                        "retries_denied_by_budget": c.retries_denied,
                    })
                })
                .collect();
            json!({
                "name": &*spec.name,
                "match": {
                    "host": match &spec.matcher.host {
                        HostMatch::Any => Value::Null,
                        HostMatch::Exact(h) => json!(h),
                        HostMatch::Suffix(s) => json!(format!("*{s}")),
                    },
                    "path_prefix": spec.matcher.path_prefix,
                    "headers": spec.matcher.headers.iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
                        .collect::<serde_json::Map<_, _>>(),
                },
                "timeout_ms": spec.timeout.as_millis() as u64,
                "split": split,
                "sticky": spec.sticky.as_ref().map(|s| match s {
                    StickyKey::Header(h) => json!({ "header": h.as_str() }),
                    StickyKey::Cookie(c) => json!({ "cookie": c }),
                }),
                "override_header": spec.override_header.as_ref().map(|h| h.as_str()),
                "rate_limit": super::traffic::rate_limit(r),
                "fault": super::traffic::fault(r),
                "shadow": r.shadow.as_deref().map(super::shadow::summary),
            })
        })
        .collect();
    let now = Instant::now();
    let upstreams: Vec<Value> = snap
        .upstreams
        .iter()
        .map(|p| {
            let mut u = upstream(p, now);
            if p.spec.discover.is_some() {
                u["discovery"] = ctx.shared.discovery.status(&p.spec.name);
            }
            u
        })
        .collect();
    let events = *ctx.shared.reload_events().borrow();
    json!({
        "generation": snap.generation,
        "draining": ctx.shared.is_draining(),
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "connections": ctx.tracker.live(),
        "reloads": { "attempts": events.attempts, "rejected": events.rejected },
        "listeners": ctx.shared.listener_addrs().iter()
            .map(|(name, addr)| json!({ "name": name, "address": addr.to_string() }))
            .collect::<Vec<_>>(),
        "routes": routes,
        "upstreams": upstreams,
        "state_dir": ctx.rollouts.persistence().json(),
    })
}

fn upstream(p: &UpstreamRuntime, now: Instant) -> Value {
    let mut merged = new_histogram();
    let mut window = Totals::default();
    let backends: Vec<Value> = p
        .backends
        .iter()
        .map(|b| {
            let st = &b.state;
            let h = st.stats.latency(now);
            let _ = merged.add(&h);
            let w = st.stats.window(now);
            window.total += w.total;
            window.failed += w.failed;
            let breaker = st.breaker();
            json!({
                "address": st.addr.as_str(),
                "in_flight": st.in_flight(),
                "healthy": st.is_healthy(),
                "breaker": {
                    "state": breaker.state().as_str(),
                    "consecutive_failures": breaker.consecutive_failures(),
                    "reopens_in_ms": breaker.open_until().map(|t| t.saturating_duration_since(now).as_millis() as u64),
                },
                "window": window_json(w, &h),
                "outcomes": Outcome::ALL.iter()
                    .map(|o| (o.as_str().to_owned(), json!(st.stats.outcome(*o))))
                    .collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let mut up = json!({
        "name": &*p.spec.name,
        "in_flight": p.backends.iter().map(|b| b.state.in_flight()).sum::<u64>(),
        "available": p.backends.iter().filter(|b| b.state.available(now)).count(),
        "connect_timeout_ms": p.spec.transport.connect_timeout.as_millis() as u64,
        "protocol": p.spec.transport.protocol.as_str(),
        "window": window_json(window, &merged),
        "backends": backends,
    });
    // What the upstream adds to the default five, as its `grpc_failures` says it; only where set.
    let added = p.spec.grpc_failures.without(GrpcCodes::DEFAULT_FAILURES);
    if added != GrpcCodes::EMPTY {
        up["grpc_failures"] = json!(added.names());
    }
    up
}

/// Requests, error rate and latency percentiles (µs, to the response head) over the window.
fn window_json(c: Totals, h: &hdrhistogram::Histogram<u64>) -> Value {
    let p = Percentiles::of(h);
    json!({
        "seconds": STATS_WINDOW.as_secs(),
        "requests": c.total,
        "error_rate": c.failure_rate(),
        "latency_us": { "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999 },
    })
}

fn by_class(counters: &[&RequestCounters]) -> Value {
    CODE_CLASSES
        .iter()
        .enumerate()
        .map(|(i, class)| {
            let n: u64 = counters.iter().map(|c| c.get(i)).sum();
            ((*class).to_owned(), json!(n))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}
