//! `GET /metrics`: every family of [`families`], in one place, read through the statistics'
//! accessors and written by the one [`Exposition`] writer.
//!
//! What is known from the config is exported from the start at 0 (every route x upstream x
//! backend x code class), so rate and ratio queries never come back empty; series of routes,
//! upstreams and backends a reload removed go with them, because everything per route is read
//! from the snapshot in force.

pub mod families;
mod process;

use std::sync::atomic::Ordering::Relaxed;

use serde_json::Value;

use self::families as f;
use super::AdminCtx;
use crate::accesslog::{LogStats, Logs};
use crate::backend::discovery::board::{Board, LookupResult};
use crate::fleet::FleetNumbers;
use crate::rollout::machine::State;
use crate::routing::Snapshot;
use crate::server::limits::{Limit, LimitStats};
use crate::shared::Shared;
use crate::stats::counters::{CODE_CLASSES, GlobalCounters, LocalOp, Shortage};
use crate::stats::prometheus::{Exposition, Family};
use crate::stats::{MismatchKind, Outcome, ShadowResult};
use crate::trace::{DropReason, Tracer};

pub fn render(ctx: &AdminCtx) -> String {
    let snap = ctx.shared.snapshot();
    let mut e = Exposition::default();
    routes(&mut e, &snap);
    rollouts(&mut e, &snap, &ctx.rollouts.list());
    e.family(&f::STATE_DIR_PERSISTENT)
        .sample(&[], u8::from(ctx.rollouts.persistence().is_persistent()));
    if let Some(fleet) = &ctx.fleet {
        self::fleet(&mut e, &fleet.numbers());
    }
    backends(&mut e, &snap);
    discovery(&mut e, &ctx.shared.discovery);
    traffic(&mut e, &snap);
    shadow(&mut e, &snap);
    process_wide(&mut e, &ctx.shared, &snap, ctx.tracker.live());
    limits(&mut e, &ctx.shared.limit_stats);
    access_logs(&mut e, &ctx.shared.access_logs);
    shortages(&mut e, &ctx.shared.counters, &ctx.shared.limit_stats);
    trace_export(&mut e, &ctx.shared.tracer);
    build(&mut e);
    if let Some(p) = process::Process::read() {
        process(&mut e, &p);
    }
    e.finish()
}

/// What each route sent to each upstream of its split.
fn routes(e: &mut Exposition, snap: &Snapshot) {
    // (route, upstream, backend, counters): every backend of the upstream, then "" for the
    // answers given without one (no backend left, a fault abort).
    let counters = || {
        snap.routes.iter().flat_map(|r| {
            r.targets.iter().flat_map(move |t| {
                let backends = t.upstream.backends.iter().map(|b| b.state.addr.as_str());
                backends
                    .zip(t.counters.iter())
                    .chain([("", &t.unassigned)])
                    .map(move |(b, c)| (&*r.spec.name, &*t.upstream.spec.name, b, &**c))
            })
        })
    };
    let mut s = e.family(&f::REQUESTS);
    for (route, upstream, backend, c) in counters() {
        for (class, label) in CODE_CLASSES.iter().enumerate() {
            s.sample(&[route, upstream, backend, label], c.get(class) as f64);
        }
    }
    let mut s = e.family(&f::RESPONSES);
    for (route, upstream, backend, c) in counters() {
        for (code, n) in c.by_code().filter(|(_, n)| *n > 0) {
            s.sample(&[route, upstream, backend, &code.label()], n as f64);
        }
    }

    let mut s = e.family(&f::GRPC_RESPONSES);
    for r in &snap.routes {
        for t in &r.targets {
            for (code, n) in t.stats.grpc_by_code().filter(|(_, n)| *n > 0) {
                s.sample(&[&r.spec.name, &t.upstream.spec.name, code], n as f64);
            }
        }
    }

    let mut s = e.family(&f::ROUTE_WEIGHT);
    for r in &snap.routes {
        for (t, w) in r.targets.iter().zip(r.split.weights()) {
            s.sample(&[&r.spec.name, &t.upstream.spec.name], *w);
        }
    }
    let mut s = e.family(&f::REQUEST_DURATION);
    for r in &snap.routes {
        for t in &r.targets {
            s.histogram(&[&r.spec.name, &t.upstream.spec.name], t.stats.duration());
        }
    }
    let mut s = e.family(&f::REROUTES);
    for r in &snap.routes {
        for t in &r.targets {
            let c = t.stats.read();
            let name = &*t.upstream.spec.name;
            s.sample(&[&r.spec.name, name, "away"], c.rerouted_away as f64);
            s.sample(&[&r.spec.name, name, "in"], c.rerouted_in as f64);
        }
    }
    let mut s = e.family(&f::RETRIES);
    for r in snap.routes.iter().filter(|r| r.spec.retries.is_some()) {
        for t in &r.targets {
            let c = t.stats.read();
            let name = &*t.upstream.spec.name;
            s.sample(&[&r.spec.name, name, "attempted"], c.retries as f64);
            s.sample(&[&r.spec.name, name, "denied"], c.retries_denied as f64);
        }
    }
}

/// From the rollout controller's views (`GET /rollouts`), for the routes that have a rollout
/// in the config in force (the controller forgets a removed one on its next tick).
fn rollouts(e: &mut Exposition, snap: &Snapshot, views: &[Value]) {
    let in_config = |route: &str| snap.route(route).is_some_and(|r| r.spec.rollout.is_some());
    let rows = || {
        views
            .iter()
            .filter_map(|v| Some((v["route"].as_str()?, v)))
            .filter(|(route, _)| in_config(route))
    };
    let mut s = e.family(&f::ROLLOUT_STEP);
    for (route, v) in rows() {
        if let Some(step) = v["step_metric"].as_f64() {
            s.sample(&[route], step);
        }
    }
    let mut s = e.family(&f::ROLLOUT_STATE);
    for (route, v) in rows() {
        let current = v["state"].as_str();
        for state in State::NAMES {
            s.sample(&[route, state], u8::from(current == Some(state)));
        }
    }
    let mut s = e.family(&f::ROLLOUT_INFO);
    for (route, v) in rows() {
        let text = |k: &str| v[k].as_str().unwrap_or_default();
        s.sample(
            &[route, text("strategy"), text("stable"), text("canary")],
            1u8,
        );
    }
}

/// This replica's part in its fleet (with `cluster:`).
fn fleet(e: &mut Exposition, n: &FleetNumbers) {
    e.family(&f::FLEET_LEADER).sample(&[], u8::from(n.leading));
    e.family(&f::FLEET_NODES).sample(&[], n.nodes as f64);
    e.family(&f::FLEET_ETCD_UP).sample(&[], u8::from(n.etcd_up));
    let mut s = e.family(&f::FLEET_PUBLISHES);
    s.sample(&["ok"], n.publishes_ok as f64);
    s.sample(&["failed"], n.publishes_failed as f64);
    let mut s = e.family(&f::FLEET_WRITES);
    for ((kind, result), count) in &n.writes {
        s.sample(&[kind, result], *count as f64);
    }
    let mut s = e.family(&f::FLEET_ETCD_REQUESTS);
    for ((call, result), count) in &n.etcd_calls {
        s.sample(&[call, result], *count as f64);
    }
    let mut s = e.family(&f::FLEET_SPEC_MISMATCH);
    for (route, mismatch) in &n.spec_mismatch {
        s.sample(&[route], u8::from(*mismatch));
    }
}

/// Each backend of each upstream, as the registry keeps it.
fn backends(e: &mut Exposition, snap: &Snapshot) {
    let all = || {
        snap.upstreams.iter().flat_map(|p| {
            p.backends
                .iter()
                .map(move |b| (&*p.spec.name, b.state.addr.as_str(), &*b.state))
        })
    };
    let mut s = e.family(&f::UPSTREAM_LATENCY);
    for (upstream, addr, b) in all() {
        s.histogram(&[upstream, addr], b.stats.latency_buckets());
    }
    let mut s = e.family(&f::UPSTREAM_OUTCOMES);
    for (upstream, addr, b) in all() {
        for o in Outcome::ALL {
            s.sample(&[upstream, addr, o.as_str()], b.stats.outcome(o) as f64);
        }
    }
    let mut s = e.family(&f::BREAKER_STATE);
    for (upstream, addr, b) in all() {
        s.sample(&[upstream, addr], b.breaker().state().gauge());
    }
    let mut s = e.family(&f::BACKEND_HEALTHY);
    for (upstream, addr, b) in all() {
        s.sample(&[upstream, addr], u8::from(b.is_healthy()));
    }
    let mut s = e.family(&f::BACKEND_IN_FLIGHT);
    for (upstream, addr, b) in all() {
        s.sample(&[upstream, addr], b.in_flight() as f64);
    }
    let mut s = e.family(&f::UPSTREAM_RESENDS);
    for (upstream, addr, b) in all() {
        s.sample(
            &[upstream, addr, "stale_connection"],
            b.stats.stale_resends() as f64,
        );
        s.sample(
            &[upstream, addr, "refused"],
            b.stats.refused_resends() as f64,
        );
    }
}

/// What rate limits and fault injection did, for the routes that have them.
fn traffic(e: &mut Exposition, snap: &Snapshot) {
    let mut s = e.family(&f::RATE_LIMITED);
    for r in &snap.routes {
        if let Some(limit) = &r.rate_limit {
            s.sample(&[&r.spec.name], limit.counts().read() as f64);
        }
    }
    let mut s = e.family(&f::FAULTS_INJECTED);
    for r in &snap.routes {
        let Some(fault) = &r.fault else { continue };
        for (t, counts) in r.targets.iter().zip(fault.counts()) {
            let Some(c) = counts else { continue };
            let (delayed, aborted) = c.read();
            for (kind, n) in [("delay", delayed), ("abort", aborted)] {
                s.sample(&[&r.spec.name, &t.upstream.spec.name, kind], n as f64);
            }
        }
    }
}

/// Every route that shadows.
fn shadow(e: &mut Exposition, snap: &Snapshot) {
    let shadows = || snap.routes.iter().filter_map(|r| r.shadow.as_deref());
    let mut s = e.family(&f::SHADOW_REQUESTS);
    for sh in shadows() {
        for r in ShadowResult::ALL {
            s.sample(
                &[&sh.route, &sh.spec.upstream, r.as_str()],
                sh.stats.result(r) as f64,
            );
        }
    }
    let mut s = e.family(&f::SHADOW_MISMATCHES);
    for sh in shadows() {
        for k in MismatchKind::ALL {
            s.sample(
                &[&sh.route, &sh.spec.upstream, k.as_str()],
                sh.stats.mismatches(k) as f64,
            );
        }
    }
    let mut s = e.family(&f::SHADOW_COMPARISONS);
    for sh in shadows() {
        s.sample(
            &[&sh.route, &sh.spec.upstream],
            sh.stats.read().compared as f64,
        );
    }
    let mut s = e.family(&f::SHADOW_IN_FLIGHT);
    for sh in shadows() {
        s.sample(&[&sh.route, &sh.spec.upstream], sh.in_flight.get());
    }
}

/// What DNS discovery found for each discovered upstream.
fn discovery(e: &mut Exposition, board: &Board) {
    let watches = board.all();
    let mut s = e.family(&f::DNS_LOOKUPS);
    for (upstream, w) in &watches {
        for r in LookupResult::ALL {
            s.sample(&[upstream, r.as_str()], w.lookups(r) as f64);
        }
    }
    let mut s = e.family(&f::DISCOVERED_BACKENDS);
    for (upstream, w) in &watches {
        s.sample(&[upstream], w.in_force() as f64);
    }
}

/// Counters that belong to no route: config, TLS, connections, lifecycle.
fn process_wide(e: &mut Exposition, shared: &Shared, snap: &Snapshot, connections: usize) {
    let g: &GlobalCounters = &shared.counters;
    e.family(&f::UNROUTED)
        .sample(&[], g.unrouted_total() as f64);
    let mut s = e.family(&f::CONFIG_RELOADS);
    for (result, n) in [
        ("applied", &g.reloads_applied),
        ("rejected", &g.reloads_rejected),
        ("unchanged", &g.reloads_unchanged),
    ] {
        s.sample(&[result], n.load(Relaxed) as f64);
    }
    e.family(&f::CONFIG_LAST_RELOAD_SUCCESS)
        .sample(&[], g.last_reload.success_seconds());
    e.family(&f::CONFIG_LAST_RELOAD_SUCCESSFUL)
        .sample(&[], u8::from(g.last_reload.ok()));
    e.family(&f::CONFIG_GENERATION)
        .sample(&[], snap.generation as f64);

    let mut s = e.family(&f::TLS_CERT_RELOADS);
    for (result, n) in [
        ("applied", &g.tls.cert_reloads_applied),
        ("rejected", &g.tls.cert_reloads_rejected),
    ] {
        s.sample(&[result], n.load(Relaxed) as f64);
    }
    e.family(&f::TLS_HANDSHAKE_ERRORS)
        .sample(&[], g.tls.handshake_errors.load(Relaxed) as f64);
    let mut s = e.family(&f::TLS_CERT_EXPIRY);
    for (listener, server_name, expiry) in g.tls.expiry.all() {
        s.sample(&[&listener, &server_name], expiry);
    }

    e.family(&f::CONNECTIONS).sample(&[], connections as f64);
    e.family(&f::DRAINING)
        .sample(&[], u8::from(shared.is_draining()));
}

/// Every listener that has run since start (kept for the life of the process).
fn limits(e: &mut Exposition, stats: &LimitStats) {
    let all = stats.all();
    let mut s = e.family(&f::LIMIT_REJECTIONS);
    for (listener, c) in &all {
        for l in Limit::ALL {
            s.sample(&[listener, l.as_str()], c.get(l) as f64);
        }
    }
    let mut s = e.family(&f::ACCEPT_ERRORS);
    for (listener, c) in &all {
        s.sample(&[listener], c.accept.errors() as f64);
    }
}

/// Every access log target used since start.
fn access_logs(e: &mut Exposition, logs: &Logs) {
    let all = logs.stats();
    type Count = fn(&LogStats) -> u64;
    let families: [(&Family, Count); 3] = [
        (&f::ACCESS_LOG_LINES, |s| s.lines.load(Relaxed)),
        (&f::ACCESS_LOG_DROPPED, |s| s.dropped.load(Relaxed)),
        (&f::ACCESS_LOG_WRITE_ERRORS, |s| {
            s.write_errors.load(Relaxed)
        }),
    ];
    for (family, count) in families {
        let mut s = e.family(family);
        for (path, st) in &all {
            s.sample(&[path], count(st) as f64);
        }
    }
}

/// The proxy's own shortages: connecting to backends (process-wide) and accepting clients
/// (summed over the listeners); every series from the start.
fn shortages(e: &mut Exposition, g: &GlobalCounters, stats: &LimitStats) {
    let all = stats.all();
    let mut s = e.family(&f::LOCAL_RESOURCE_ERRORS);
    for op in LocalOp::ALL {
        for short in Shortage::ALL {
            let n = match op {
                LocalOp::Connect => g.local.get(short),
                LocalOp::Accept => all.iter().map(|(_, c)| c.accept.shortages(short)).sum(),
            };
            s.sample(&[op.as_str(), short.as_str()], n as f64);
        }
    }
}

/// What span export did (every series present from the start, export on or off).
fn trace_export(e: &mut Exposition, tracer: &Tracer) {
    e.family(&f::TRACE_SPANS_EXPORTED)
        .sample(&[], tracer.exported() as f64);
    let mut s = e.family(&f::TRACE_SPANS_DROPPED);
    for r in DropReason::ALL {
        s.sample(&[r.as_str()], tracer.dropped(r) as f64);
    }
    e.family(&f::TRACE_QUEUE_SPANS)
        .sample(&[], tracer.queued() as f64);
}

fn build(e: &mut Exposition) {
    e.family(&f::BUILD_INFO)
        .sample(&[env!("CARGO_PKG_VERSION"), env!("SWITCHYARD_COMMIT")], 1u8);
}

fn process(e: &mut Exposition, p: &process::Process) {
    e.family(&f::PROCESS_CPU).sample(&[], p.cpu_seconds);
    e.family(&f::PROCESS_RSS)
        .sample(&[], p.resident_memory_bytes);
    e.family(&f::PROCESS_VSIZE)
        .sample(&[], p.virtual_memory_bytes);
    e.family(&f::PROCESS_OPEN_FDS).sample(&[], p.open_fds);
    e.family(&f::PROCESS_MAX_FDS).sample(&[], p.max_fds);
    e.family(&f::PROCESS_START)
        .sample(&[], p.start_time_seconds);
}
