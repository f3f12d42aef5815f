//! `GET /status`: what is in force right now, as JSON.

use serde_json::{Value, json};

use super::AdminCtx;
use crate::config::model::{HostMatch, StickyKey};
use crate::stats::RequestCounters;
use crate::stats::counters::CODE_CLASSES;

pub fn render(ctx: &AdminCtx) -> Value {
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
                    json!({
                        "upstream": &*t.pool.spec.name,
                        "weight": live,
                        "configured_weight": configured.weight,
                        "responses": by_class(&all),
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
            })
        })
        .collect();
    let upstreams: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<Value> = p
                .backends
                .iter()
                .map(|b| json!({ "address": b.state.addr.as_str(), "in_flight": b.state.in_flight() }))
                .collect();
            json!({
                "name": &*p.spec.name,
                "in_flight": p.backends.iter().map(|b| b.state.in_flight()).sum::<u64>(),
                "connect_timeout_ms": p.spec.transport.connect_timeout.as_millis() as u64,
                "backends": backends,
            })
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
