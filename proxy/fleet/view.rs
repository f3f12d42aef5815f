//! `GET /rollouts/{route}` on a replica of a fleet: the fleet's state (the same on every
//! replica), this replica's weights, and a `fleet` object saying where it stands: epoch, who
//! wrote the state, the leader, a spec that differs from the fleet's, an abort not in etcd yet.

use serde_json::{Value, json};

use super::state::FleetState;
use crate::config::rollout::RolloutSpec;
use crate::reload::snapshot::RouteRuntime;
use crate::rollout::engine::{Rollout, Sample};
use crate::rollout::handle::{step_metric, weights_json};
use crate::rollout::machine::State;

pub(crate) struct ViewOf<'a> {
    pub name: &'a str,
    pub spec: Option<&'a RolloutSpec>,
    pub local_fp: Option<&'a str>,
    pub fleet: Option<&'a FleetState>,
    /// The leader's engine: its decisions include the holds, which are not written to etcd.
    pub judge: Option<&'a Rollout>,
    pub abort: Option<&'a str>,
    /// The leader's count of the step so far, every replica's summed.
    pub counted: Option<Sample>,
    pub holding: Option<&'a str>,
    pub route: Option<&'a RouteRuntime>,
    pub persistent: bool,
    pub fleet_name: &'a str,
    pub leader: Option<&'a str>,
    pub leading: bool,
    pub up: bool,
    pub now_ms: u64,
}

pub(crate) fn view(v: &ViewOf<'_>) -> Value {
    let weights = weights_json(v.route);
    let fleet = json!({
        "name": v.fleet_name,
        "epoch": v.fleet.map(|f| f.epoch),
        "by": v.fleet.map(|f| &f.by),
        "updated_ms": v.fleet.map(|f| f.updated_ms),
        "leader": v.leader,
        "leading": v.leading,
        "etcd_up": v.up,
        "waiting": v.fleet.is_none(),
        "fingerprint": v.local_fp,
        "spec_mismatch": v.fleet.is_some_and(|f| Some(f.fingerprint.as_str()) != v.local_fp),
        "abort_pending": v.abort,
        "holding": v.holding,
        "counted": v.counted.map(|s| json!({
            "canary": { "requests": s.canary.requests, "failures": s.canary.failures },
            "stable": { "requests": s.stable.requests, "failures": s.stable.failures },
            "breaker_opens": s.breaker_opens,
        })),
    });
    let Some(f) = v.fleet else {
        // Not in the fleet yet: this replica's spec, its canary at 0 until the fleet says.
        return json!({
            "route": v.name,
            "strategy": v.spec.map(|s| s.strategy),
            "stable": v.spec.map(|s| &s.stable),
            "canary": v.spec.map(|s| &s.canary),
            "state": State::Pending.name(),
            "step": Value::Null,
            "steps": v.spec.map(|s| &s.steps[..s.step_count()]),
            "step_metric": step_metric(State::Pending, 0),
            "canary_weight": 0,
            "weights": weights,
            "step_elapsed_ms": 0,
            "spec": v.spec,
            "fingerprint": v.local_fp,
            "persistent": v.persistent,
            "last_decision": Value::Null,
            "decisions": [],
            "history": [],
            "fleet": fleet,
        });
    };
    let steps: Vec<Value> = f.spec["steps"]
        .as_array()
        .map(|s| s.iter().take(f.steps).cloned().collect())
        .unwrap_or_default();
    let decisions: Vec<Value> = match v.judge {
        Some(j) => j
            .decisions
            .iter()
            .filter_map(|d| serde_json::to_value(d).ok())
            .collect(),
        None => f.decisions.clone(),
    };
    json!({
        "route": v.name,
        "strategy": f.spec["strategy"],
        "stable": f.stable,
        "canary": f.canary,
        "state": f.state.name(),
        "step": f.state.step(),
        "steps": steps,
        "step_metric": step_metric(f.state, f.steps),
        "canary_weight": if v.abort.is_some() { 0 } else { f.canary_weight },
        "weights": weights,
        "step_elapsed_ms": v.now_ms.saturating_sub(f.step_started_ms),
        "spec": f.spec,
        "fingerprint": f.fingerprint,
        "persistent": v.persistent,
        "last_decision": decisions.last(),
        "decisions": decisions,
        "history": f.history,
        "fleet": fleet,
    })
}
