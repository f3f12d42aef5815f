//! The rollout controller: one task for every rolled-out route. It ticks often (so the abort
//! rules act within a fraction of a second), reads each route's two arms from the snapshot's
//! statistics, lets each [`Rollout`] decide, and sends the weights that follow to the reloader
//! (the one writer of the snapshot). Every transition goes to the journal and the state file.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::engine::{Counts, Latency, Rollout, Sample};
use super::handle::{Request, RolloutHandle, view, weights_json};
use super::journal::{Entry, InUse, Journal, Loaded, Saved};
use super::machine::State;
use crate::config::Config;
use crate::config::model::Route;
use crate::reload::ReloadHandle;
use crate::routing::{RouteRuntime, Target};
use crate::server::shutdown::Stop;
use crate::shared::Shared;
use crate::stats::TargetStats;

/// How often rollouts are looked at.
pub const TICK: Duration = Duration::from_millis(100);

pub struct Controller {
    shared: Arc<Shared>,
    reload: ReloadHandle,
    journal: Journal,
    /// What the state file held at start, until the first reconcile picks it up.
    saved: BTreeMap<String, Saved>,
    /// Why the state file could not be trusted at start: the first reconcile holds every
    /// rollout at stable (fail closed) instead of starting it.
    untrusted: Option<String>,
    rollouts: BTreeMap<Arc<str>, Rollout>,
    views: Arc<Mutex<BTreeMap<String, Value>>>,
    rx: mpsc::Receiver<Request>,
    generation: u64,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn split_of(route: &Route) -> Vec<(&str, u32)> {
    route
        .split
        .iter()
        .map(|s| (&*s.upstream, s.weight))
        .collect()
}

impl Controller {
    /// Picks up the rollouts of `config`, resuming saved ones of the same spec. Fails only when
    /// another process holds `state_dir`.
    pub fn new(
        config: &Config,
        shared: Arc<Shared>,
        reload: ReloadHandle,
    ) -> Result<(Self, RolloutHandle), InUse> {
        let journal = Journal::open(config.state_dir.as_deref())?;
        if !journal.has_dir() && config.routes.iter().any(|r| r.rollout.is_some()) {
            tracing::warn!(
                "no state_dir: rollouts are kept in memory only and start over after a restart"
            );
        }
        let (tx, rx) = mpsc::channel(16);
        let views = Arc::default();
        let (saved, untrusted) = trusted_state(&journal);
        let mut c = Controller {
            saved,
            untrusted,
            journal,
            generation: shared.snapshot().generation,
            shared,
            reload,
            rollouts: BTreeMap::new(),
            views: Arc::clone(&views),
            rx,
        };
        c.reconcile(config, Instant::now());
        c.untrusted = None;
        for route in std::mem::take(&mut c.saved).keys() {
            tracing::warn!(route = %route, "the state file has a rollout for a route that has none in the config; dropped");
        }
        c.publish_views(Instant::now());
        let persistence = c.journal.persistence();
        Ok((
            c,
            RolloutHandle {
                tx,
                views,
                persistence,
            },
        ))
    }

    /// Renders `GET /rollouts` again (after the first snapshot took the initial weights).
    pub fn refresh_views(&self) {
        self.publish_views(Instant::now());
    }

    /// The weights every rolled-out route should start with.
    pub fn initial_weights(&self, config: &Config) -> Vec<(Arc<str>, Vec<u32>)> {
        self.rollouts
            .values()
            .filter_map(|r| {
                let route = config.route(&r.route)?;
                Some((Arc::clone(&r.route), r.weights(&split_of(route))))
            })
            .collect()
    }

    /// Follows `config`: a route whose rollout spec is unchanged keeps its rollout; a changed
    /// spec starts a new one (and says so); a removed one is forgotten. Returns the routes
    /// whose run-time weights must be cleared.
    fn reconcile(&mut self, config: &Config, now: Instant) -> Vec<Arc<str>> {
        let generation = self.generation;
        let mut next = BTreeMap::new();
        for route in &config.routes {
            let Some(spec) = &route.rollout else { continue };
            let name = Arc::clone(&route.name);
            let fresh = Rollout::new(Arc::clone(&name), Arc::clone(spec), now);
            let (r, replaced) = match self.rollouts.remove(&name) {
                Some(old) if old.fingerprint == fresh.fingerprint => (old, None),
                Some(old) => (
                    fresh,
                    Some((old.state, "the rollout spec changed; a new rollout starts")),
                ),
                None => match self.saved.remove(&*name) {
                    Some(saved) => {
                        let r = Rollout::restore(Arc::clone(&name), Arc::clone(spec), &saved, now);
                        if r.fingerprint == saved.fingerprint {
                            tracing::info!(route = %name, state = %r.state, "rollout resumed from the state file");
                            (r, None)
                        } else {
                            (
                                r,
                                Some((
                                    saved.state,
                                    "the rollout spec changed while switchyard was stopped; a new rollout starts",
                                )),
                            )
                        }
                    }
                    None => (fresh, None),
                },
            };
            let mut r = r;
            if let Some(why) = &self.untrusted
                && r.state == State::Pending
                && let Ok(change) = r.transition(State::Held, why.clone(), now)
            {
                tracing::error!(route = %name, "{why}");
                record(&self.journal, &mut r, route, change, generation);
            }
            if let Some((from, reason)) = replaced {
                tracing::warn!(route = %name, %from, "{reason}");
                let entry = Entry {
                    time_ms: unix_ms(),
                    route: name.to_string(),
                    from,
                    to: State::Pending,
                    reason: reason.to_owned(),
                    weights: r.weights(&split_of(route)),
                    generation,
                    writer: self.journal.writer().to_owned(),
                };
                self.journal.append(&entry);
                r.record(entry);
            }
            // Started here rather than on the next tick, so a command sent at once finds it going.
            if r.state == State::Pending
                && let Ok(change) = r.transition(
                    State::Progressing { step: 0 },
                    "rollout started".into(),
                    now,
                )
            {
                record(&self.journal, &mut r, route, change, generation);
            }
            next.insert(name, r);
        }
        let gone: Vec<Arc<str>> = self
            .rollouts
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        for route in &gone {
            tracing::info!(route = %route, "rollout removed from the config; the config's weights apply");
        }
        self.rollouts = next;
        self.save();
        gone
    }

    fn save(&self) {
        let all: BTreeMap<String, Saved> = self
            .rollouts
            .values()
            .map(|r| (r.route.to_string(), r.saved()))
            .collect();
        self.journal.save(&all);
    }

    /// Serves until `stop` fires.
    pub async fn run(mut self, mut stop: Stop) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => return,
                _ = tick.tick() => self.tick(Instant::now()).await,
                req = self.rx.recv() => match req {
                    Some(req) => self.operate(req).await,
                    None => return,
                },
            }
        }
    }

    async fn tick(&mut self, now: Instant) {
        let snap = self.shared.snapshot();
        if snap.generation != self.generation {
            self.generation = snap.generation;
            for route in self.reconcile(&snap.config, now) {
                self.reload.set_weights(route, None).await;
            }
        }
        let mut changed = false;
        for r in self.rollouts.values_mut() {
            let Some(rt) = snap.route(&r.route) else {
                continue;
            };
            let Some((canary, stable)) = arms(rt, &r.spec.canary, &r.spec.stable) else {
                continue;
            };
            let sample = sample(rt, canary, stable);
            if let Some(change) = r.observe(now, unix_ms(), sample, || latency(canary, stable)) {
                record(&self.journal, r, &rt.spec, change, self.generation);
                changed = true;
            }
        }
        self.sync_weights().await;
        if changed {
            self.save();
        }
        self.publish_views(now);
    }

    /// Sends the weights each rollout wants where the snapshot has others (after a transition,
    /// or a reload that dropped them).
    async fn sync_weights(&mut self) {
        let snap = self.shared.snapshot();
        for r in self.rollouts.values() {
            let Some(rt) = snap.route(&r.route) else {
                continue;
            };
            let want = r.weights(&split_of(&rt.spec));
            if rt.split.weights() != want.as_slice()
                && !self
                    .reload
                    .set_weights(Arc::clone(&r.route), Some(want.clone()))
                    .await
            {
                tracing::warn!(route = %r.route, ?want, "the reloader refused the rollout's weights");
            }
        }
    }

    async fn operate(&mut self, req: Request) {
        let now = Instant::now();
        let snap = self.shared.snapshot();
        let result = match (
            self.rollouts.get_mut(req.route.as_str()),
            snap.route(&req.route),
        ) {
            (Some(r), Some(rt)) => match r.operate(req.op, now) {
                Ok(change) => {
                    record(&self.journal, r, &rt.spec, change, self.generation);
                    Ok(())
                }
                Err(e) => Err((409, e.to_string())),
            },
            _ => Err((404, format!("route `{}` has no rollout", req.route))),
        };
        if result.is_ok() {
            self.sync_weights().await;
            self.save();
        }
        self.publish_views(now);
        let result = result.map(|()| {
            self.views
                .lock()
                .ok()
                .and_then(|v| v.get(&req.route).cloned())
                .unwrap_or(Value::Null)
        });
        let _ = req.reply.send(result);
    }

    fn publish_views(&self, now: Instant) {
        let snap = self.shared.snapshot();
        let views = self
            .rollouts
            .values()
            .map(|r| {
                let weights = weights_json(snap.route(&r.route));
                (
                    r.route.to_string(),
                    view(r, weights, now, self.journal.is_persistent()),
                )
            })
            .collect();
        if let Ok(mut v) = self.views.lock() {
            *v = views;
        }
    }
}

/// The saved rollouts that can be trusted, or why none can: a state file that cannot be read,
/// or one in a `state_dir` that cannot be written (it may miss the latest transitions).
pub(crate) fn trusted_state(journal: &Journal) -> (BTreeMap<String, Saved>, Option<String>) {
    const HELD: &str =
        "stable takes all the traffic until an operator resumes (from step 0) or aborts";
    match journal.load() {
        Loaded::Saved(saved)
            if !saved.is_empty() && journal.has_dir() && !journal.is_persistent() =>
        {
            let why = format!(
                "state_dir cannot be written, so its rollout state file may miss the latest transitions and is not trusted; {HELD}"
            );
            tracing::error!("{why}");
            (BTreeMap::new(), Some(why))
        }
        Loaded::Saved(saved) => (saved, None),
        Loaded::Untrusted { why, kept_aside } => {
            let aside = kept_aside.map_or_else(
                || "it could not be moved aside".to_owned(),
                |p| format!("it was kept aside as {}", p.display()),
            );
            (
                BTreeMap::new(),
                Some(format!(
                    "the rollout state file could not be read: {why}; {aside}; {HELD}"
                )),
            )
        }
    }
}

fn record(
    journal: &Journal,
    r: &mut Rollout,
    route: &Route,
    change: super::engine::Change,
    generation: u64,
) {
    let weights = r.weights(&split_of(route));
    tracing::info!(route = %r.route, from = %change.from, to = %change.to, ?weights, "rollout: {}", change.reason);
    let entry = Entry {
        time_ms: unix_ms(),
        route: r.route.to_string(),
        from: change.from,
        to: change.to,
        reason: change.reason,
        weights,
        generation,
        writer: journal.writer().to_owned(),
    };
    journal.append(&entry);
    r.record(entry);
}

/// A rollout's (canary, stable) targets in the route's snapshot.
pub(crate) fn arms<'a>(
    rt: &'a RouteRuntime,
    canary: &str,
    stable: &str,
) -> Option<(&'a Target, &'a Target)> {
    let find = |name: &str| rt.targets.iter().find(|t| &*t.upstream.spec.name == name);
    Some((find(canary)?, find(stable)?))
}

fn counts(t: &TargetStats) -> Counts {
    Counts {
        requests: t.requests(),
        failures: t.failures(),
    }
}

/// The cumulative readings of a rollout's two arms (latency aside: see [`latency`]).
pub(crate) fn sample(rt: &RouteRuntime, canary: &Target, stable: &Target) -> Sample {
    Sample {
        canary: counts(&canary.stats),
        stable: counts(&stable.stats),
        breaker_opens: canary
            .upstream
            .backends
            .iter()
            .map(|b| b.state.stats.breaker_opens())
            .sum(),
        shadow: rt
            .shadow
            .as_ref()
            .map(|s| s.stats.read())
            .unwrap_or_default(),
    }
}

/// The cumulative latency histograms of (canary, stable): costlier, read only when needed.
pub(crate) fn latency(canary: &Target, stable: &Target) -> Latency {
    let now = Instant::now();
    (canary.stats.latency(now), stable.stats.latency(now))
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
