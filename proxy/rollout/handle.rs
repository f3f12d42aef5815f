//! What the admin API holds of the rollout controller: the rendered state of every rollout
//! (read without waiting for the controller) and a channel for operator commands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::engine::{Op, Rollout};
use super::journal::Persistence;
use super::machine::State;
use crate::reload::snapshot::RouteRuntime;

pub(crate) type Reply = oneshot::Sender<Result<Value, (u16, String)>>;

/// An operator's command, for the task that runs the rollouts.
pub(crate) struct Request {
    pub route: String,
    pub op: Op,
    pub reply: Reply,
}

/// What the admin API reads and sends; cheap to clone.
#[derive(Clone)]
pub struct RolloutHandle {
    pub(crate) tx: tokio::sync::mpsc::Sender<Request>,
    pub(crate) views: Arc<Mutex<BTreeMap<String, Value>>>,
    pub(crate) persistence: Arc<Persistence>,
}

impl RolloutHandle {
    pub fn list(&self) -> Vec<Value> {
        self.views
            .lock()
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, route: &str) -> Option<Value> {
        self.views.lock().ok()?.get(route).cloned()
    }

    /// `switchyard_rollout_step`: (route, step).
    pub fn steps(&self) -> Vec<(String, f64)> {
        self.list()
            .iter()
            .filter_map(|v| Some((v["route"].as_str()?.to_owned(), v["step_metric"].as_f64()?)))
            .collect()
    }

    /// Whether transitions reach `state_dir` (`/status`, `switchyard_state_dir_persistent`).
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// Runs an operator command; the error is (HTTP status, message).
    pub async fn command(&self, route: &str, op: Op) -> Result<Value, (u16, String)> {
        let (reply, rx) = oneshot::channel();
        let gone = || (503, "switchyard is shutting down".to_owned());
        let req = Request {
            route: route.to_owned(),
            op,
            reply,
        };
        self.tx.send(req).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The `weights` of a view: each upstream of the route's split with its weight in force.
pub(crate) fn weights_json(rt: Option<&RouteRuntime>) -> Vec<Value> {
    rt.map(|rt| {
        rt.targets
            .iter()
            .zip(rt.split.weights())
            .map(|(t, w)| json!({ "upstream": &*t.upstream.spec.name, "weight": w }))
            .collect()
    })
    .unwrap_or_default()
}

/// `switchyard_rollout_step` of a rollout in `state` of `steps` steps.
pub(crate) fn step_metric(state: State, steps: usize) -> f64 {
    match state {
        State::Pending => 0.0,
        State::Progressing { step } | State::Paused { step } => step as f64,
        State::Promoted => steps as f64,
        State::RolledBack | State::Aborted | State::Held => -1.0,
    }
}

/// `GET /rollouts/{route}`.
pub(crate) fn view(r: &Rollout, weights: Vec<Value>, now: Instant, persistent: bool) -> Value {
    let steps = r.spec.step_count();
    json!({
        "route": &*r.route,
        "strategy": r.spec.strategy,
        "stable": r.spec.stable,
        "canary": r.spec.canary,
        "state": r.state.name(),
        "step": r.state.step(),
        "steps": &r.spec.steps[..steps],
        "step_metric": step_metric(r.state, steps),
        "canary_weight": r.canary_weight(),
        "weights": weights,
        "step_elapsed_ms": r.step_elapsed(now).as_millis() as u64,
        "spec": &*r.spec,
        "fingerprint": r.fingerprint,
        "persistent": persistent,
        "last_decision": r.decisions.back(),
        "decisions": r.decisions,
        "history": r.history,
    })
}
