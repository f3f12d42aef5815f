//! What the admin API shows of the fleet: [`Status`], written by the session and the controller
//! and read by `/status` and `/metrics` ([`FleetNumbers`]); [`FleetHandle`] adds, for
//! `/status`, every replica's report read from etcd when asked (followers do not watch them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::Keys;
use super::etcd::Etcd;
use super::state::NodeReport;

/// One route as this replica sees it in the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RouteStatus {
    pub local_fingerprint: Option<String>,
    pub fleet_fingerprint: Option<String>,
    /// The fleet's epoch this replica applies.
    pub epoch: Option<u64>,
    /// The weights this replica routes with (the fleet's, when it follows it).
    pub weights: Vec<u32>,
    /// The leader's word on the route when it holds (replicas disagree on the spec).
    pub holding: Option<String>,
    /// A local abort not in etcd yet.
    pub abort_pending: bool,
}

impl RouteStatus {
    pub(crate) fn mismatch(&self) -> bool {
        self.fleet_fingerprint.is_some() && self.local_fingerprint != self.fleet_fingerprint
    }
}

#[derive(Debug, Default)]
struct Inner {
    down: Option<String>,
    connected_once: bool,
    leader: Option<String>,
    leading: bool,
    nodes: usize,
    last_publish_ms: u64,
    routes: BTreeMap<String, RouteStatus>,
}

/// Counters and state of this replica's part in the fleet.
#[derive(Debug, Default)]
pub(crate) struct Status {
    inner: Mutex<Inner>,
    publishes_ok: AtomicU64,
    publishes_failed: AtomicU64,
    /// Writes by (kind, result).
    writes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub(crate) fn set_down(&self, why: Option<String>) {
        self.with(|i| {
            i.connected_once |= why.is_none();
            i.down = why;
        });
    }

    pub(crate) fn set_leader(&self, leader: Option<String>, leading: bool) {
        self.with(|i| {
            i.leader = leader;
            i.leading = leading;
        });
    }

    pub(crate) fn set_nodes(&self, n: usize) {
        self.with(|i| i.nodes = n);
    }

    pub(crate) fn published(&self, ok: bool, time_ms: u64) {
        if ok {
            self.publishes_ok.fetch_add(1, Relaxed);
            self.with(|i| i.last_publish_ms = time_ms);
        } else {
            self.publishes_failed.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn wrote(&self, kind: &'static str, result: &'static str) {
        if let Ok(mut w) = self.writes.lock() {
            *w.entry((kind, result)).or_default() += 1;
        }
    }

    pub(crate) fn set_routes(&self, routes: BTreeMap<String, RouteStatus>) {
        self.with(|i| i.routes = routes);
    }
}

/// The fleet's numbers for `/metrics` (`switchyard_fleet_*`).
#[derive(Debug, Clone, Default)]
pub struct FleetNumbers {
    pub leading: bool,
    pub nodes: usize,
    pub etcd_up: bool,
    pub publishes_ok: u64,
    pub publishes_failed: u64,
    /// Writes by (kind, result).
    pub writes: Vec<((&'static str, &'static str), u64)>,
    /// etcd calls by (call, result).
    pub etcd_calls: Vec<((&'static str, &'static str), u64)>,
    /// Whether this replica's spec differs from the fleet's, by route.
    pub spec_mismatch: Vec<(String, bool)>,
}

/// What the admin API holds of the fleet; cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    pub(crate) status: Arc<Status>,
    pub(crate) etcd: Arc<Etcd>,
    pub(crate) keys: Keys,
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) publish_interval: Duration,
}

impl FleetHandle {
    /// `fleet` of `/status`: this replica, the leader, etcd, every replica's last report (read
    /// now, bounded by etcd's call timeout) and whether it applies the fleet's weights.
    pub async fn status(&self) -> Value {
        let (me, routes) = self.status.with(|i| {
            (
                json!({
                    "name": self.name,
                    "node": self.node,
                    "leader": i.leader,
                    "leading": i.leading,
                    "etcd": {
                        "endpoints": self.etcd.endpoints(),
                        "up": i.connected_once && i.down.is_none(),
                        "error": i.down,
                    },
                    "lease_ttl_ms": self.lease_ttl.as_millis() as u64,
                    "publish_interval_ms": self.publish_interval.as_millis() as u64,
                    "last_publish_ms": i.last_publish_ms,
                }),
                i.routes.clone(),
            )
        });
        let mut out = me;
        out["routes"] = routes
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    json!({
                        "epoch": r.epoch,
                        "weights": r.weights,
                        "fingerprint": r.local_fingerprint,
                        "fleet_fingerprint": r.fleet_fingerprint,
                        "spec_mismatch": r.mismatch(),
                        "holding": r.holding,
                        "abort_pending": r.abort_pending,
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        match self.etcd.range_prefix(&self.keys.nodes(), false).await {
            Ok(range) => {
                let now = super::unix_ms();
                let mut converged = true;
                let nodes: Vec<Value> = range
                    .kvs
                    .iter()
                    .filter_map(|kv| serde_json::from_slice::<NodeReport>(&kv.value).ok())
                    .map(|n| {
                        let agrees = routes.iter().all(|(route, mine)| {
                            mine.epoch.is_none()
                                || n.routes.get(route).is_some_and(|theirs| {
                                    theirs.epoch == mine.epoch && theirs.weights == mine.weights
                                })
                        });
                        converged &= agrees;
                        json!({
                            "node": n.node,
                            "pid": n.pid,
                            "process": n.process,
                            "leader": Some(&n.node) == out["leader"].as_str().map(str::to_owned).as_ref(),
                            "last_publish_ms_ago": now.saturating_sub(n.time_ms),
                            "converged": agrees,
                            "routes": n.routes.iter().map(|(route, r)| (route.clone(), json!({
                                "epoch": r.epoch,
                                "weights": r.weights,
                                "fingerprint": r.fingerprint,
                            }))).collect::<serde_json::Map<_, _>>(),
                        })
                    })
                    .collect();
                out["size"] = json!(nodes.len());
                out["converged"] = json!(converged);
                out["nodes"] = json!(nodes);
            }
            Err(e) => {
                out["nodes"] = Value::Null;
                out["nodes_error"] = json!(e.to_string());
            }
        }
        out
    }

    /// What `/metrics` shows of the fleet.
    pub fn numbers(&self) -> FleetNumbers {
        let (leading, nodes, etcd_up, spec_mismatch) = self.status.with(|i| {
            (
                i.leading,
                i.nodes,
                i.connected_once && i.down.is_none(),
                i.routes
                    .iter()
                    .map(|(route, r)| (route.clone(), r.mismatch()))
                    .collect(),
            )
        });
        FleetNumbers {
            leading,
            nodes,
            etcd_up,
            publishes_ok: self.status.publishes_ok.load(Relaxed),
            publishes_failed: self.status.publishes_failed.load(Relaxed),
            writes: self
                .status
                .writes
                .lock()
                .map(|w| w.iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default(),
            etcd_calls: self.etcd.calls.snapshot(),
            spec_mismatch,
        }
    }
}
