//! The rollouts of a replica in a fleet. One task, as the single-process controller: it ticks
//! (every 100 ms), reads the route's arms from the snapshot, and sends weights to the reloader.
//! What differs is where decisions come from:
//!
//! - the fleet's state in etcd, applied when the session reports it (weights, journal, view);
//! - a *guard* per rollout: the engine on this replica's own numbers with gates it can never
//!   pass, so only its abort rules act: it sends the canary no more traffic here at once and
//!   writes the abort for everyone;
//! - on the leader, a *judge* per rollout: the engine on the fleet's summed numbers, whose
//!   decisions are written conditioned on the leadership and applied once written.
//!
//! Operators' commands are written to etcd (conditioned on the state they were made on) and
//! answered once written; with etcd away only abort acts (here at once, for the fleet later).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::decide::{self, Plan};
use super::etcd::Etcd;
use super::etcd::api::{Compare, Op as TxnOp};
use super::next::{self, Author};
use super::session::{Cmd, Event, Session};
use super::state::{FleetState, NodeReport, Reading, RouteReport};
use super::status::{FleetHandle, RouteStatus, Status};
use super::sum::FleetSum;
use super::{Keys, unix_ms};
use crate::config::Config;
use crate::config::cluster::Cluster;
use crate::config::rollout::RolloutSpec;
use crate::reload::ReloadHandle;
use crate::reload::snapshot::Snapshot;
use crate::rollout::controller::{TICK, arms, latency, sample, split_of, trusted_state};
use crate::rollout::engine::{Op, Rollout};
use crate::rollout::handle::{Reply, Request, RolloutHandle};
use crate::rollout::journal::{Entry, InUse, Journal, Saved};
use crate::rollout::machine::State;
use crate::server::shutdown::{Stop, stop_pair};
use crate::shared::Shared;

/// A long time: the guard's steps never end, so only its abort rules decide.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// One route with a rollout here or in the fleet.
struct Route {
    name: Arc<str>,
    /// This replica's spec (its config), and its fingerprint.
    spec: Option<Arc<RolloutSpec>>,
    local_fp: Option<String>,
    /// The fleet's state and its etcd revision.
    fleet: Option<(FleetState, i64)>,
    /// The last fleet state applied: if etcd loses it, the leader starts again from here.
    last_known: Option<FleetState>,
    /// (epoch, engine on this replica's numbers that only aborts).
    guard: Option<(u64, Rollout)>,
    /// (epoch, engine on the fleet's numbers): the leader's.
    judge: Option<(u64, Rollout)>,
    sum: FleetSum,
    /// This replica's counters when it applied the epoch: its step's counts are the difference.
    base: Option<(u64, Reading)>,
    /// An abort decided here that etcd does not have yet: the canary gets nothing here.
    abort: Option<LocalAbort>,
    /// A write for this route is in flight.
    busy: bool,
    holding: Option<String>,
}

impl Route {
    fn new(name: Arc<str>) -> Route {
        Route {
            name,
            spec: None,
            local_fp: None,
            fleet: None,
            last_known: None,
            guard: None,
            judge: None,
            sum: FleetSum::default(),
            base: None,
            abort: None,
            busy: false,
            holding: None,
        }
    }

    fn active(&self) -> Option<&FleetState> {
        self.fleet
            .as_ref()
            .map(|(s, _)| s)
            .filter(|s| matches!(s.state, State::Progressing { .. } | State::Paused { .. }))
    }

    /// Whether this replica's spec is the fleet's: then it counts, guards and may judge.
    fn matches(&self) -> bool {
        matches!((&self.local_fp, &self.fleet), (Some(l), Some((s, _))) if *l == s.fingerprint)
    }
}

#[derive(Debug, Clone)]
struct LocalAbort {
    fingerprint: String,
    to: State,
    reason: String,
    decision: Option<Value>,
}

enum Pending {
    Decision {
        route: Arc<str>,
        next: FleetState,
    },
    Start {
        route: Arc<str>,
        next: Option<FleetState>,
    },
    Command {
        route: Arc<str>,
        next: FleetState,
        reply: Reply,
    },
    Abort {
        route: Arc<str>,
        next: FleetState,
        reply: Option<Reply>,
    },
}

pub struct FleetController {
    shared: Arc<Shared>,
    reload: ReloadHandle,
    journal: Journal,
    cluster: Cluster,
    keys: Keys,
    process: String,
    writer: String,
    generation: u64,
    routes: BTreeMap<Arc<str>, Route>,
    /// What `state_dir` held at start: a fleet with no state starts again from it.
    saved: BTreeMap<String, Saved>,
    untrusted: Option<String>,
    /// Every replica's last report (leader only).
    nodes: BTreeMap<String, NodeReport>,
    nodes_known: bool,
    leading: bool,
    leader: Option<String>,
    up: bool,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<Event>,
    report: watch::Sender<Option<NodeReport>>,
    session: Option<Session>,
    status: Arc<Status>,
    views: Arc<Mutex<BTreeMap<String, Value>>>,
    rx: mpsc::Receiver<Request>,
    started_ms: u64,
}

/// etcd calls are bounded by half the lease, 1 to 5 s: a renewal sent a third of the way in
/// still lands before the lease ends.
fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// A random id for this process: a restarted replica is a new source of counts.
fn process_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(unix_ms());
    format!("{:016x}", h.finish())
}

/// The guard's spec: the route's own, with steps that never end and a request count never
/// reached, so the engine only ever aborts.
fn guard_spec(spec: &RolloutSpec) -> RolloutSpec {
    let mut g = spec.clone();
    g.step_interval = NEVER;
    if !g.post_promotion.is_zero() {
        g.post_promotion = NEVER;
    }
    g.gates.min_requests = u64::MAX;
    g
}

fn saved_of(st: &FleetState, fingerprint: String) -> Saved {
    Saved {
        fingerprint,
        state: st.state,
        history: st.history.clone(),
    }
}

/// The canary's share for `state` of a rollout of `spec`.
fn canary_weight(name: &Arc<str>, spec: &Arc<RolloutSpec>, state: State) -> u32 {
    let mut r = Rollout::new(Arc::clone(name), Arc::clone(spec), Instant::now());
    r.state = state;
    r.canary_weight()
}

/// This replica's cumulative counters of a rollout's two arms.
fn local_reading(snap: &Snapshot, route: &str, spec: &RolloutSpec) -> Option<Reading> {
    let rt = snap.route(route)?;
    let (canary, stable) = arms(rt, &spec.canary, &spec.stable)?;
    Some(Reading {
        sample: sample(rt, canary, stable),
        latency: latency(canary, stable),
    })
}

/// Transitions `new` has that `old` did not (the journal's lines for it).
fn new_entries<'a>(old: Option<&FleetState>, new: &'a FleetState) -> &'a [Entry] {
    let Some(old) = old else { return &[] };
    if old.epoch == new.epoch && old.fingerprint == new.fingerprint {
        return &[];
    }
    match old
        .history
        .last()
        .and_then(|last| new.history.iter().rposition(|e| e == last))
    {
        Some(i) => &new.history[i + 1..],
        None => &new.history[new.history.len().saturating_sub(1)..],
    }
}

impl FleetController {
    /// Takes the fleet's state before serving: the rollouts' weights are in the first snapshot
    /// ([`FleetController::initial_weights`]). With etcd unreachable it says so and serves
    /// without a canary, except where `state_dir` saw a rollout end (rolled back, aborted: the
    /// canary stays at 0; promoted: it stays promoted); it joins when etcd answers. Fails only
    /// when another process holds `state_dir`.
    pub async fn join(
        config: &Config,
        cluster: &Cluster,
        shared: Arc<Shared>,
        reload: ReloadHandle,
    ) -> Result<(Self, RolloutHandle, FleetHandle), InUse> {
        let journal = Journal::open(config.state_dir.as_deref())?;
        let (saved, untrusted) = trusted_state(&journal);
        let etcd = Arc::new(Etcd::new(&cluster.etcd, call_timeout(cluster.lease_ttl)));
        let keys = Keys::new(&cluster.name);
        let status = Arc::new(Status::default());
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (report, report_rx) = watch::channel(None);
        let process = process_id();
        let session = Session::new(
            Arc::clone(&etcd),
            keys.clone(),
            cluster.node.clone(),
            process.clone(),
            cluster.lease_ttl,
            cluster.publish_interval,
            events_tx,
            cmd_rx,
            report_rx,
            Arc::clone(&status),
        );
        let (tx, rx) = mpsc::channel(16);
        let views = Arc::default();
        let mut c = FleetController {
            generation: 0,
            shared,
            reload,
            journal,
            cluster: cluster.clone(),
            keys: keys.clone(),
            writer: format!("{}/{}", cluster.node, std::process::id()),
            process,
            routes: BTreeMap::new(),
            saved,
            untrusted,
            nodes: BTreeMap::new(),
            nodes_known: false,
            leading: false,
            leader: None,
            up: false,
            pending: BTreeMap::new(),
            next_id: 0,
            cmds,
            events,
            report,
            session: Some(session),
            status: Arc::clone(&status),
            views: Arc::clone(&views),
            rx,
            started_ms: unix_ms(),
        };
        c.follow_config(config);
        c.generation = c.shared.snapshot().generation;
        match etcd.range_prefix(&keys.rollouts(), false).await {
            Ok(range) => {
                let n = range.kvs.len();
                for kv in range.kvs {
                    let Some(route) = kv.key.strip_prefix(&keys.rollouts()) else {
                        continue;
                    };
                    match serde_json::from_slice::<FleetState>(&kv.value) {
                        Ok(st) => c.apply(route, Some((st, kv.mod_revision)), true),
                        Err(e) => {
                            tracing::error!(key = %kv.key, error = %e, "the fleet's rollout state cannot be read; this route serves without a canary until it can")
                        }
                    }
                }
                c.up = true;
                status.set_down(None);
                tracing::info!(fleet = %cluster.name, node = %cluster.node, rollouts = n, "joined the fleet: its rollouts' weights are in force from the first request");
            }
            Err(e) => {
                tracing::error!(fleet = %cluster.name, node = %cluster.node, endpoints = %etcd.endpoints(), "cannot join the fleet: {e}; serving now without canary traffic (rollouts that state_dir saw end keep their end), and joining when etcd answers");
                status.set_down(Some(e.to_string()));
                c.seed_from_saved();
            }
        }
        c.publish_views(Instant::now());
        let persistence = c.journal.persistence();
        let handle = FleetHandle {
            status,
            etcd,
            keys,
            name: cluster.name.clone(),
            node: cluster.node.clone(),
            lease_ttl: cluster.lease_ttl,
            publish_interval: cluster.publish_interval,
        };
        Ok((
            c,
            RolloutHandle {
                tx,
                views,
                persistence,
            },
            handle,
        ))
    }

    /// With etcd away at start: rollouts that `state_dir` saw end keep their end.
    fn seed_from_saved(&mut self) {
        for r in self.routes.values_mut() {
            let (Some(spec), Some(saved)) = (&r.spec, self.saved.get(&*r.name)) else {
                continue;
            };
            if saved.fingerprint != spec.fingerprint() || !saved.state.is_terminal() {
                continue;
            }
            let by = Author {
                node: &self.cluster.node,
                now_ms: unix_ms(),
            };
            let cw = canary_weight(&r.name, spec, saved.state);
            let st = next::started(spec, saved.state, cw, saved.history.clone(), None, 0, by);
            // Revision 0: any state read from etcd later replaces it.
            r.fleet = Some((st, 0));
        }
    }

    /// Renders `GET /rollouts` again (after the first snapshot took the initial weights).
    pub fn refresh_views(&self) {
        self.publish_views(Instant::now());
    }

    /// The weights every rollout of the fleet starts with, for the first snapshot.
    pub fn initial_weights(&self, config: &Config) -> Vec<(Arc<str>, Vec<u32>)> {
        self.routes
            .values()
            .filter_map(|r| {
                let route = config.route(&r.name)?;
                let want = decide::weights(
                    &split_of(route),
                    r.spec.as_deref(),
                    r.fleet.as_ref().map(|(s, _)| s),
                    r.abort.is_some(),
                )?;
                Some((Arc::clone(&r.name), want))
            })
            .collect()
    }

    /// Picks up the rollout specs of `config`.
    fn follow_config(&mut self, config: &Config) {
        if let Some(c) = &config.cluster
            && *c != self.cluster
        {
            tracing::warn!("`cluster:` changed; it takes effect on restart");
        }
        let mut seen = Vec::new();
        for route in &config.routes {
            let Some(spec) = &route.rollout else { continue };
            let r = self
                .routes
                .entry(Arc::clone(&route.name))
                .or_insert_with(|| Route::new(Arc::clone(&route.name)));
            let fp = spec.fingerprint();
            if r.local_fp.as_deref() != Some(fp.as_str()) {
                r.spec = Some(Arc::clone(spec));
                r.local_fp = Some(fp);
                r.guard = None;
                r.judge = None;
            }
            seen.push(Arc::clone(&route.name));
        }
        for r in self.routes.values_mut() {
            if !seen.contains(&r.name) && r.spec.is_some() {
                r.spec = None;
                r.local_fp = None;
                r.guard = None;
                r.judge = None;
            }
        }
        self.routes
            .retain(|_, r| r.spec.is_some() || r.fleet.is_some() || r.busy);
    }

    /// Serves until `stop` fires; then leaves the fleet (revokes its lease).
    pub async fn run(mut self, mut stop: Stop) {
        let (stop_session, session_stop) = stop_pair();
        let session = self
            .session
            .take()
            .map(|s| tokio::spawn(s.run(session_stop)));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut publish = tokio::time::interval(self.cluster.publish_interval);
        publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => break,
                _ = tick.tick() => self.tick().await,
                _ = publish.tick() => self.publish_report(),
                Some(ev) = self.events.recv() => self.event(ev).await,
                req = self.rx.recv() => match req {
                    Some(req) => self.operate(req).await,
                    None => break,
                },
            }
        }
        stop_session.fire();
        if let Some(task) = session {
            let _ = tokio::time::timeout(call_timeout(self.cluster.lease_ttl) * 2, task).await;
        }
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Down(why) => {
                self.up = why.is_none();
                if !self.up {
                    for r in self.routes.values_mut() {
                        r.judge = None;
                    }
                }
            }
            Event::Rollouts(all) => {
                let present: Vec<String> = all.iter().map(|(r, _, _)| r.clone()).collect();
                for (route, st, rev) in all {
                    self.apply(&route, Some((st, rev)), true);
                }
                // A state seeded from state_dir at start (revision 0) stays until etcd has one.
                let gone: Vec<Arc<str>> = self
                    .routes
                    .values()
                    .filter(|r| r.fleet.as_ref().is_some_and(|(_, rev)| *rev != 0))
                    .filter(|r| !present.iter().any(|p| **p == *r.name))
                    .map(|r| Arc::clone(&r.name))
                    .collect();
                for route in gone {
                    self.apply(&route, None, true);
                }
                self.sync_weights().await;
            }
            Event::Rollout(route, st) => {
                self.apply(&route, st, false);
                self.sync_weights().await;
            }
            Event::Leader { leader, leading } => {
                self.leader = leader;
                if leading != self.leading {
                    self.leading = leading;
                    self.nodes.clear();
                    self.nodes_known = false;
                    for r in self.routes.values_mut() {
                        r.judge = None;
                        r.sum = FleetSum::default();
                        if let Some((st, _)) = &r.fleet {
                            r.sum.begin_epoch(st.epoch);
                        }
                    }
                }
            }
            Event::Nodes(all) => {
                self.nodes.clear();
                for n in all {
                    self.node_report(n);
                }
                self.nodes_known = true;
                self.status.set_nodes(self.nodes.len());
            }
            Event::Node(node, Some(n)) => {
                self.node_report(n);
                debug_assert!(self.nodes.contains_key(&node));
                self.status.set_nodes(self.nodes.len());
            }
            Event::Node(node, None) => {
                self.nodes.remove(&node);
                self.status.set_nodes(self.nodes.len());
            }
            Event::Written { id, result } => self.written(id, result).await,
        }
    }

    /// A replica's report: its counters go into the sums of the rollouts it counts for.
    fn node_report(&mut self, n: NodeReport) {
        for (route, rep) in &n.routes {
            let Some(r) = self.routes.get_mut(route.as_str()) else {
                continue;
            };
            let (Some(wire), Some(epoch), Some((st, _))) = (&rep.reading, rep.epoch, &r.fleet)
            else {
                continue;
            };
            if rep.fingerprint.as_deref() == Some(st.fingerprint.as_str()) {
                r.sum.observe(
                    (n.node.clone(), n.process.clone()),
                    epoch,
                    Reading::from_wire(wire),
                );
            }
        }
        self.nodes.insert(n.node.clone(), n);
    }

    /// Applies the fleet's state for `route` (`None`: it has none). A watch event older than
    /// what is applied is ignored; a fresh read (`resync`) is applied whatever its revision.
    fn apply(&mut self, route: &str, next: Option<(FleetState, i64)>, resync: bool) {
        let name: Arc<str> = Arc::from(route);
        let r = self
            .routes
            .entry(Arc::clone(&name))
            .or_insert_with(|| Route::new(Arc::clone(&name)));
        match (&r.fleet, &next) {
            (Some((_, rev)), Some((_, nrev))) if !resync && nrev <= rev => return,
            (Some((cur, _)), Some((st, _))) if cur == st => {
                r.fleet = next;
                return;
            }
            (None, None) => return,
            _ => {}
        }
        let old = r.fleet.take().map(|(s, _)| s);
        match &next {
            Some((st, _)) => {
                for e in new_entries(old.as_ref(), st) {
                    tracing::info!(route, from = %e.from, to = %e.to, weights = ?e.weights, by = %st.by, "fleet rollout: {}", e.reason);
                    self.journal.append(e);
                }
                if old.is_none() {
                    tracing::info!(route, state = %st.state, epoch = st.epoch, "fleet rollout applied");
                }
                let new_epoch = old
                    .as_ref()
                    .is_none_or(|o| o.epoch != st.epoch || o.fingerprint != st.fingerprint);
                if new_epoch {
                    // This replica counts the new step from now.
                    r.base = r
                        .spec
                        .as_ref()
                        .filter(|_| r.local_fp.as_deref() == Some(st.fingerprint.as_str()))
                        .and_then(|spec| local_reading(&self.shared.snapshot(), &r.name, spec))
                        .map(|now| (st.epoch, now));
                    r.guard = None;
                    if r.judge.as_ref().is_some_and(|j| j.0 != st.epoch) {
                        r.judge = None;
                    }
                    r.sum.begin_epoch(st.epoch);
                }
                if r.abort
                    .as_ref()
                    .is_some_and(|a| st.state.is_terminal() || a.fingerprint != st.fingerprint)
                {
                    r.abort = None;
                }
                r.last_known = Some(st.clone());
            }
            None => {
                tracing::info!(route, "the fleet has no rollout for this route any more");
                r.guard = None;
                r.judge = None;
                r.base = None;
                r.abort = None;
                if r.spec.is_none() {
                    r.last_known = None;
                }
            }
        }
        r.fleet = next;
        self.save();
    }

    /// The fleet's states as this replica applies them, in `state_dir`.
    fn save(&self) {
        let all: BTreeMap<String, Saved> = self
            .routes
            .values()
            .filter_map(|r| {
                let (st, _) = r.fleet.as_ref()?;
                Some((r.name.to_string(), saved_of(st, st.fingerprint.clone())))
            })
            .collect();
        self.journal.save(&all);
    }

    async fn tick(&mut self) {
        let snap = self.shared.snapshot();
        if snap.generation != self.generation {
            self.generation = snap.generation;
            self.follow_config(&snap.config);
        }
        let now = Instant::now();
        let now_ms = unix_ms();
        let names: Vec<Arc<str>> = self.routes.keys().cloned().collect();
        for name in &names {
            self.guard(&snap, name, now, now_ms);
        }
        if self.leading && self.up && self.nodes_known {
            for name in &names {
                self.lead(name, now, now_ms);
            }
        }
        if self.up {
            for name in &names {
                if self
                    .routes
                    .get(name)
                    .is_some_and(|r| r.abort.is_some() && !r.busy)
                {
                    self.write_abort(name, None);
                }
            }
        }
        self.sync_weights().await;
        self.publish_views(now);
    }

    /// This replica's own abort rules, on its own numbers.
    fn guard(&mut self, snap: &Snapshot, name: &Arc<str>, now: Instant, now_ms: u64) {
        let Some(r) = self.routes.get_mut(name) else {
            return;
        };
        let (Some(spec), Some(st)) = (r.spec.clone(), r.active().cloned()) else {
            r.guard = None;
            return;
        };
        if !r.matches() || r.abort.is_some() {
            r.guard = None;
            return;
        }
        let Some(rt) = snap.route(name) else { return };
        let Some((canary, stable)) = arms(rt, &spec.canary, &spec.stable) else {
            return;
        };
        if r.guard.as_ref().is_none_or(|g| g.0 != st.epoch) {
            let g = Arc::new(guard_spec(&spec));
            let saved = saved_of(&st, g.fingerprint());
            r.guard = Some((st.epoch, Rollout::restore(Arc::clone(name), g, &saved, now)));
        }
        let Some((_, g)) = r.guard.as_mut() else {
            return;
        };
        let s = sample(rt, canary, stable);
        let Some(change) = g.observe(now, now_ms, s, || latency(canary, stable)) else {
            return;
        };
        let decision = g
            .decisions
            .back()
            .and_then(|d| serde_json::to_value(d).ok());
        let is_abort = decision.as_ref().is_some_and(|d| d["abort"] == true);
        r.guard = None;
        if is_abort && change.to == State::RolledBack {
            self.local_abort(name, State::RolledBack, change.reason, decision, None);
        }
    }

    /// Sends the canary nothing more here and writes the abort to the fleet.
    fn local_abort(
        &mut self,
        name: &Arc<str>,
        to: State,
        reason: String,
        decision: Option<Value>,
        reply: Option<Reply>,
    ) {
        let Some(r) = self.routes.get_mut(name) else {
            return;
        };
        let Some((st, _)) = &r.fleet else { return };
        if st.state.is_terminal() {
            return;
        }
        tracing::warn!(route = %name, "{reason}: this replica sends the canary no more traffic; writing it to the fleet");
        r.abort = Some(LocalAbort {
            fingerprint: st.fingerprint.clone(),
            to,
            reason,
            decision,
        });
        r.guard = None;
        r.judge = None;
        self.write_abort(name, reply);
    }

    fn write_abort(&mut self, name: &Arc<str>, reply: Option<Reply>) {
        let Some(r) = self.routes.get(name) else {
            return;
        };
        let (Some((st, rev)), Some(a)) = (&r.fleet, &r.abort) else {
            return;
        };
        if r.busy {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(self.view_now(name)));
            }
            return;
        }
        let entry = self.entry(
            name,
            st.state,
            a.to,
            a.reason.clone(),
            (&st.stable, &st.canary),
            0,
        );
        let by = Author {
            node: &self.cluster.node,
            now_ms: unix_ms(),
        };
        let next = next::after(st, a.to, 0, entry, a.decision.clone(), by);
        let compare = vec![Compare::ModRevision(self.keys.rollout(name), *rev)];
        let id = self.write(false, compare, &next, name);
        self.pending.insert(
            id,
            Pending::Abort {
                route: Arc::clone(name),
                next,
                reply,
            },
        );
    }

    /// Sends a write of `next` (conditioned on `compare`, and on the leadership if
    /// `leader_only`) to the session; its id.
    fn write(
        &mut self,
        leader_only: bool,
        compare: Vec<Compare>,
        next: &FleetState,
        name: &Arc<str>,
    ) -> u64 {
        let value = serde_json::to_vec(next).unwrap_or_default();
        let op = TxnOp::Put {
            key: self.keys.rollout(name),
            value,
            lease: 0,
        };
        self.send(leader_only, compare, vec![op], name)
    }

    fn send(
        &mut self,
        leader_only: bool,
        compare: Vec<Compare>,
        ops: Vec<TxnOp>,
        name: &Arc<str>,
    ) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        if let Some(r) = self.routes.get_mut(name) {
            r.busy = true;
        }
        let _ = self.cmds.send(Cmd::Write {
            id,
            leader_only,
            compare,
            ops,
        });
        id
    }

    /// A journal line for a transition of `name` from `from` to `to`, with the weights this
    /// replica routes with afterwards.
    fn entry(
        &self,
        name: &str,
        from: State,
        to: State,
        reason: String,
        (stable, canary): (&str, &str),
        cw: u32,
    ) -> Entry {
        let snap = self.shared.snapshot();
        let weights = snap
            .route(name)
            .map(|rt| {
                split_of(&rt.spec)
                    .iter()
                    .map(|&(up, w)| {
                        if up == canary {
                            cw
                        } else if up == stable {
                            100 - cw.min(100)
                        } else {
                            w
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Entry {
            time_ms: unix_ms(),
            route: name.to_owned(),
            from,
            to,
            reason,
            weights,
            generation: snap.generation,
            writer: self.writer.clone(),
        }
    }

    /// The leader's work on one route: start, replace or remove the fleet's rollout when every
    /// replica agrees on its spec, or judge it on the fleet's numbers.
    fn lead(&mut self, name: &Arc<str>, now: Instant, now_ms: u64) {
        let me = self.cluster.node.as_str();
        let Some(r) = self.routes.get(name) else {
            return;
        };
        if r.busy {
            return;
        }
        let others = self
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != me)
            .map(|(_, rep)| {
                rep.routes
                    .get(&**name)
                    .and_then(|x| x.fingerprint.as_deref())
            });
        let agreed = decide::agreed(std::iter::once(r.local_fp.as_deref()).chain(others));
        // A state seeded from state_dir at start (revision 0) is not in etcd yet: start it there.
        let in_etcd = r.fleet.as_ref().filter(|(_, rev)| *rev != 0);
        let plan = decide::plan(in_etcd.map(|(s, _)| s.fingerprint.as_str()), agreed);
        let holding = (plan == Plan::Hold).then(|| {
            let differ: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, rep)| {
                    rep.routes.get(&**name).and_then(|x| x.fingerprint.as_deref()) != r.local_fp.as_deref()
                })
                .map(|(n, _)| n.clone())
                .collect();
            format!(
                "replicas disagree on the rollout spec ({} differ from the leader's); no step advances until every replica has the same",
                differ.join(", ")
            )
        });
        if let Some(r) = self.routes.get_mut(name) {
            if r.holding != holding
                && let Some(h) = &holding
            {
                tracing::warn!(route = %name, "{h}");
            }
            r.holding = holding;
        }
        match plan {
            Plan::Judge => self.judge(name, now, now_ms),
            Plan::Create | Plan::Replace => self.start(name, plan, now_ms),
            Plan::Remove => {
                let Some((_, rev)) = self.routes.get(name).and_then(|r| r.fleet.clone()) else {
                    return;
                };
                let key = self.keys.rollout(name);
                let id = self.send(
                    true,
                    vec![Compare::ModRevision(key.clone(), rev)],
                    vec![TxnOp::Delete(key)],
                    name,
                );
                self.pending.insert(
                    id,
                    Pending::Start {
                        route: Arc::clone(name),
                        next: None,
                    },
                );
            }
            Plan::Hold | Plan::Nothing => {
                if let Some(r) = self.routes.get_mut(name) {
                    r.judge = None;
                }
            }
        }
    }

    /// Starts the fleet's rollout for `name` with this replica's spec: it continues from what
    /// this replica knew of it (etcd lost it) or starts anew (held, when this replica's saved
    /// state could not be trusted).
    fn start(&mut self, name: &Arc<str>, plan: Plan, now_ms: u64) {
        let Some(r) = self.routes.get(name) else {
            return;
        };
        let Some(spec) = r.spec.clone() else { return };
        let fp = spec.fingerprint();
        let prev = r.fleet.clone();
        let known = r
            .last_known
            .as_ref()
            .filter(|k| k.fingerprint == fp)
            .map(|k| (k.state, k.history.clone(), format!("the fleet had no state for this rollout; it continues from {}'s copy", self.cluster.node)))
            .or_else(|| {
                self.saved.get(&**name).filter(|s| s.fingerprint == fp).map(|s| {
                    (s.state, s.history.clone(), format!("the fleet had no state for this rollout; it continues from {}'s state_dir", self.cluster.node))
                })
            });
        let (state, history, reason) = match (plan, known, &prev, &self.untrusted) {
            (Plan::Replace, _, Some((p, _)), _) => (
                State::Progressing { step: 0 },
                p.history.clone(),
                "the rollout spec changed on every replica; a new rollout starts".to_owned(),
            ),
            (_, Some(k), _, _) => k,
            (_, None, _, Some(why)) => (State::Held, Vec::new(), why.clone()),
            _ => (
                State::Progressing { step: 0 },
                Vec::new(),
                "rollout started".to_owned(),
            ),
        };
        let from = prev.as_ref().map_or(State::Pending, |(p, _)| p.state);
        let cw = canary_weight(name, &spec, state);
        let by = Author {
            node: &self.cluster.node,
            now_ms,
        };
        let entry = self.entry(
            name,
            from,
            state,
            reason.clone(),
            (&spec.stable, &spec.canary),
            cw,
        );
        let entry = Some(entry);
        let prev_epoch = prev.as_ref().map_or(0, |(p, _)| p.epoch);
        let next = next::started(&spec, state, cw, history, entry, prev_epoch, by);
        let rev = prev.as_ref().map_or(0, |(_, rev)| *rev);
        tracing::info!(route = %name, state = %state, "leading: {reason}");
        let compare = vec![Compare::ModRevision(self.keys.rollout(name), rev)];
        let id = self.write(true, compare, &next, name);
        self.pending.insert(
            id,
            Pending::Start {
                route: Arc::clone(name),
                next: Some(next),
            },
        );
    }

    /// The leader's engine on the fleet's numbers.
    fn judge(&mut self, name: &Arc<str>, now: Instant, now_ms: u64) {
        let Some(r) = self.routes.get_mut(name) else {
            return;
        };
        let (Some(spec), Some(st)) = (r.spec.clone(), r.active().cloned()) else {
            r.judge = None;
            return;
        };
        if r.abort.is_some() {
            return;
        }
        let mut change = None;
        if r.judge.as_ref().is_none_or(|j| j.0 != st.epoch) {
            // A step that began before this replica led: its window goes on, on the wall clock
            // and on the counts replicas published for it.
            let elapsed = Duration::from_millis(decide::elapsed_ms(st.step_started_ms, now_ms));
            let started = now.checked_sub(elapsed).unwrap_or(now);
            let saved = saved_of(&st, st.fingerprint.clone());
            let mut j = Rollout::restore(Arc::clone(name), spec, &saved, started);
            let carried = r.sum.carried();
            change = j.observe(now, now_ms, carried.sample, || carried.latency.clone());
            r.judge = Some((st.epoch, j));
        }
        let Some((_, j)) = r.judge.as_mut() else {
            return;
        };
        if change.is_none() {
            let total = r.sum.total_sample();
            let sum = &r.sum;
            change = j.observe(now, now_ms, total, || sum.total_latency());
        }
        let Some(change) = change else { return };
        let decision = j
            .decisions
            .back()
            .and_then(|d| serde_json::to_value(d).ok());
        if decision.as_ref().is_some_and(|d| d["abort"] == true) {
            // Abort is anyone's: written as an abort, not as a leader's decision.
            self.local_abort(name, State::RolledBack, change.reason, decision, None);
            return;
        }
        let cw = j.canary_weight();
        let entry = self.entry(
            name,
            change.from,
            change.to,
            change.reason.clone(),
            (&st.stable, &st.canary),
            cw,
        );
        let by = Author {
            node: &self.cluster.node,
            now_ms,
        };
        let next = next::after(&st, change.to, cw, entry, decision, by);
        tracing::info!(route = %name, from = %change.from, to = %change.to, "leading: {}", change.reason);
        if let Some((epoch, _)) = self.routes.get_mut(name).and_then(|r| r.judge.as_mut()) {
            *epoch = next.epoch;
        }
        let rev = self
            .routes
            .get(name)
            .and_then(|r| r.fleet.as_ref())
            .map_or(0, |(_, rev)| *rev);
        let compare = vec![Compare::ModRevision(self.keys.rollout(name), rev)];
        let id = self.write(true, compare, &next, name);
        self.pending.insert(
            id,
            Pending::Decision {
                route: Arc::clone(name),
                next,
            },
        );
    }

    async fn written(&mut self, id: u64, result: Result<(bool, i64), super::etcd::EtcdError>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let route = match &p {
            Pending::Decision { route, .. }
            | Pending::Start { route, .. }
            | Pending::Command { route, .. }
            | Pending::Abort { route, .. } => Arc::clone(route),
        };
        if let Some(r) = self.routes.get_mut(&route) {
            r.busy = false;
        }
        let kind = match &p {
            Pending::Decision { .. } => "decision",
            Pending::Start { .. } => "start",
            Pending::Command { .. } => "command",
            Pending::Abort { .. } => "abort",
        };
        let outcome = match &result {
            Ok((true, _)) => "written",
            Ok((false, _)) => "refused",
            Err(_) => "failed",
        };
        self.status.wrote(kind, outcome);
        match (p, result) {
            (
                Pending::Decision { next, .. }
                | Pending::Abort {
                    next, reply: None, ..
                },
                Ok((true, rev)),
            ) => {
                self.apply(&route, Some((next, rev)), false);
            }
            (Pending::Start { next, .. }, Ok((true, rev))) => {
                self.apply(&route, next.map(|n| (n, rev)), false);
            }
            (
                Pending::Command { next, reply, .. }
                | Pending::Abort {
                    next,
                    reply: Some(reply),
                    ..
                },
                Ok((true, rev)),
            ) => {
                self.apply(&route, Some((next, rev)), false);
                self.sync_weights().await;
                let _ = reply.send(Ok(self.view_now(&route)));
            }
            (Pending::Decision { .. } | Pending::Start { .. }, result) => {
                let why = match result {
                    Ok(_) => {
                        "this replica no longer leads, or the rollout changed meanwhile".to_owned()
                    }
                    Err(e) => e.to_string(),
                };
                tracing::warn!(route = %route, "a {kind} was not written ({why}); the fleet's state stands");
                if let Some(r) = self.routes.get_mut(&route) {
                    r.judge = None;
                }
            }
            (Pending::Command { reply, .. }, Ok(_)) => {
                let now = self
                    .routes
                    .get(&route)
                    .and_then(|r| r.fleet.as_ref())
                    .map(|(s, _)| s.state.to_string())
                    .unwrap_or_default();
                let _ = reply.send(Err((409, format!("the fleet's rollout changed while the command was written (it is {now} now); look and run it again if it still applies"))));
            }
            (Pending::Command { reply, .. }, Err(e)) => {
                let _ = reply.send(Err((
                    503,
                    format!("{e}; only abort acts while etcd is away"),
                )));
            }
            (Pending::Abort { reply, .. }, _) => {
                // Stays pending here (the canary gets nothing) and is written again.
                self.sync_weights().await;
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(self.view_now(&route)));
                }
            }
        }
    }

    /// An operator's command: written to the fleet, answered once written.
    async fn operate(&mut self, req: Request) {
        let name: Arc<str> = Arc::from(req.route.as_str());
        let Some(r) = self.routes.get(&name) else {
            let _ = req
                .reply
                .send(Err((404, format!("route `{}` has no rollout", req.route))));
            return;
        };
        let what = match req.op {
            Op::Promote => "promote",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Abort => "abort",
        };
        let reason = format!("operator: {what}");
        if req.op == Op::Abort {
            let Some((st, _)) = &r.fleet else {
                let _ = req.reply.send(Err((409, "the fleet has no rollout for this route yet: nothing to abort (this replica sends its canary nothing until it has)".into())));
                return;
            };
            if st.state.is_terminal() {
                let _ = req.reply.send(Err((
                    409,
                    format!("a rollout cannot go from {} to aborted", st.state),
                )));
                return;
            }
            self.local_abort(&name, State::Aborted, reason, None, Some(req.reply));
            self.sync_weights().await;
            self.publish_views(Instant::now());
            return;
        }
        if !self.up {
            let _ = req.reply.send(Err((503, format!("etcd is unreachable, so `{what}` cannot reach the fleet; only abort acts now (here at once, for the fleet when etcd answers)"))));
            return;
        }
        let (Some((st, rev)), Some(spec)) = (r.fleet.clone(), r.spec.clone()) else {
            let _ = req.reply.send(Err((409, "the fleet has no rollout for this route yet (its leader starts one once every replica has the spec)".into())));
            return;
        };
        if !r.matches() {
            let _ = req.reply.send(Err((409, "this replica's rollout spec differs from the fleet's; run the command on a replica whose config matches (or abort, which any replica can)".into())));
            return;
        }
        if r.busy {
            let _ = req.reply.send(Err((
                409,
                "a write for this rollout is in flight; try again".into(),
            )));
            return;
        }
        let now = Instant::now();
        let mut m = Rollout::restore(
            Arc::clone(&name),
            spec,
            &saved_of(&st, st.fingerprint.clone()),
            now,
        );
        let change = match m.operate(req.op, now) {
            Ok(c) => c,
            Err(e) => {
                let _ = req.reply.send(Err((409, e.to_string())));
                return;
            }
        };
        let cw = m.canary_weight();
        let entry = self.entry(
            &name,
            change.from,
            change.to,
            change.reason,
            (&st.stable, &st.canary),
            cw,
        );
        let by = Author {
            node: &self.cluster.node,
            now_ms: unix_ms(),
        };
        let next = next::after(&st, change.to, cw, entry, None, by);
        let compare = vec![Compare::ModRevision(self.keys.rollout(&name), rev)];
        let id = self.write(false, compare, &next, &name);
        self.pending.insert(
            id,
            Pending::Command {
                route: name,
                next,
                reply: req.reply,
            },
        );
    }

    /// Sends each route's weights to the reloader where the snapshot has others.
    async fn sync_weights(&mut self) {
        let snap = self.shared.snapshot();
        let mut wants = Vec::new();
        for r in self.routes.values() {
            let Some(rt) = snap.route(&r.name) else {
                continue;
            };
            let want = decide::weights(
                &split_of(&rt.spec),
                r.spec.as_deref(),
                r.fleet.as_ref().map(|(s, _)| s),
                r.abort.is_some(),
            );
            let current = rt.split.weights();
            let configured = rt.spec.weights();
            match want {
                Some(w) if w.as_slice() != current => wants.push((Arc::clone(&r.name), Some(w))),
                None if current != configured.as_slice() => wants.push((Arc::clone(&r.name), None)),
                _ => {}
            }
        }
        for (route, want) in wants {
            if !self
                .reload
                .set_weights(Arc::clone(&route), want.clone())
                .await
            {
                tracing::warn!(route = %route, ?want, "the reloader refused the fleet's weights");
            }
        }
    }

    /// This replica's report for the session to publish.
    fn publish_report(&mut self) {
        let snap = self.shared.snapshot();
        let mut routes = BTreeMap::new();
        for r in self.routes.values_mut() {
            let Some(rt) = snap.route(&r.name) else {
                continue;
            };
            let epoch = r.fleet.as_ref().map(|(s, _)| s.epoch);
            let mut reading = None;
            if let (Some(spec), Some(st)) = (r.spec.clone(), r.active().cloned())
                && r.local_fp.as_deref() == Some(st.fingerprint.as_str())
                && let Some(now) = local_reading(&snap, &r.name, &spec)
            {
                let base = match &r.base {
                    Some((e, b)) if *e == st.epoch => b,
                    _ => &r.base.insert((st.epoch, now.clone())).1,
                };
                reading = Some(now.since(base).to_wire());
            }
            routes.insert(
                r.name.to_string(),
                RouteReport {
                    fingerprint: r.local_fp.clone(),
                    epoch,
                    weights: rt.split.weights().to_vec(),
                    reading,
                },
            );
        }
        let report = NodeReport {
            node: self.cluster.node.clone(),
            process: self.process.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            time_ms: 0,
            routes,
        };
        self.report.send_replace(Some(report));
    }

    fn publish_views(&self, now: Instant) {
        let _ = now;
        let snap = self.shared.snapshot();
        let views: BTreeMap<String, Value> = self
            .routes
            .values()
            .map(|r| (r.name.to_string(), self.view(r, &snap)))
            .collect();
        let statuses = self
            .routes
            .values()
            .map(|r| {
                (
                    r.name.to_string(),
                    RouteStatus {
                        local_fingerprint: r.local_fp.clone(),
                        fleet_fingerprint: r.fleet.as_ref().map(|(s, _)| s.fingerprint.clone()),
                        epoch: r.fleet.as_ref().map(|(s, _)| s.epoch),
                        weights: snap
                            .route(&r.name)
                            .map(|rt| rt.split.weights().to_vec())
                            .unwrap_or_default(),
                        holding: r.holding.clone(),
                        abort_pending: r.abort.is_some(),
                    },
                )
            })
            .collect();
        self.status.set_routes(statuses);
        if let Ok(mut v) = self.views.lock() {
            *v = views;
        }
    }

    fn view_now(&self, name: &str) -> Value {
        self.publish_views(Instant::now());
        self.views
            .lock()
            .ok()
            .and_then(|v| v.get(name).cloned())
            .unwrap_or(Value::Null)
    }

    fn view(&self, r: &Route, snap: &Snapshot) -> Value {
        super::view::view(&super::view::ViewOf {
            name: &r.name,
            spec: r.spec.as_deref(),
            local_fp: r.local_fp.as_deref(),
            fleet: r.fleet.as_ref().map(|(s, _)| s),
            judge: if self.leading {
                r.judge.as_ref().map(|(_, j)| j)
            } else {
                None
            },
            abort: r.abort.as_ref().map(|a| a.reason.as_str()),
            counted: (self.leading && r.fleet.is_some()).then(|| r.sum.window()),
            holding: r.holding.as_deref(),
            route: snap.route(&r.name),
            persistent: self.journal.is_persistent(),
            fleet_name: &self.cluster.name,
            leader: self.leader.as_deref(),
            leading: self.leading,
            up: self.up,
            now_ms: unix_ms(),
        })
    }
}
