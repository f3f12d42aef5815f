//! What the fleet keeps in etcd, as JSON:
//!
//! - [`FleetState`] at `control/rollouts/<route>`: one route's rollout for the whole fleet.
//! - [`NodeReport`] at `nodes/<node>` (bound to the node's lease, so it leaves with the node):
//!   what one replica applies and its counters of the current step.
//! - [`Reading`]: one replica's counters of one step, as the engine reads them (cumulative
//!   counts and latency histograms of both arms), with arithmetic to sum replicas.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rollout::engine::{Counts, Latency, Sample};
use crate::rollout::journal::Entry;
use crate::rollout::machine::State;
use crate::stats::ShadowCounts;
use crate::stats::histogram::new_histogram;

/// Decisions and transitions kept in the fleet's state (as a single replica keeps them).
pub(crate) const KEEP_DECISIONS: usize = 10;
pub(crate) const KEEP_HISTORY: usize = 50;

/// One route's rollout as the fleet holds it. Every write bumps `epoch`; a transition starts a
/// new step window, so replicas count their step's numbers per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FleetState {
    /// The rollout spec's fingerprint; replicas with another spec do not judge this rollout.
    pub fingerprint: String,
    /// The spec itself, for `GET /rollouts` on replicas whose config differs.
    pub spec: Value,
    pub stable: String,
    pub canary: String,
    /// The steps actually walked (for `switchyard_rollout_step` on any replica).
    pub steps: usize,
    pub state: State,
    /// The canary's share of the 100 it shares with stable, in this state.
    pub canary_weight: u32,
    pub epoch: u64,
    /// Wall clock (unix ms) at which the current step began: a new leader continues its window.
    pub step_started_ms: u64,
    /// The replica that wrote this version.
    pub by: String,
    pub updated_ms: u64,
    #[serde(default)]
    pub decisions: Vec<Value>,
    #[serde(default)]
    pub history: Vec<Entry>,
}

/// What one replica publishes, every `publish_interval` while something changed (and at least
/// once per lease TTL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeReport {
    pub node: String,
    /// Random per process: a restarted replica is a new source whose counters start at zero.
    pub process: String,
    pub pid: u32,
    pub started_ms: u64,
    pub time_ms: u64,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RouteReport {
    /// This replica's rollout spec for the route (`None`: its config has no rollout there).
    pub fingerprint: Option<String>,
    /// The fleet epoch it applies.
    pub epoch: Option<u64>,
    /// The route's weights in force here, in split order.
    pub weights: Vec<u32>,
    /// Its counters since it applied `epoch` (only while its spec is the fleet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<WireReading>,
}

/// A [`Reading`] on the wire: counts as `[requests, failures]`, histograms as
/// `[value, count, value, count, ...]` over their recorded buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireReading {
    pub canary: [u64; 2],
    pub stable: [u64; 2],
    pub breaker_opens: u64,
    /// `[compared, mismatched]`.
    pub shadow: [u64; 2],
    pub canary_latency: Vec<u64>,
    pub stable_latency: Vec<u64>,
}

/// Counters of one step: what [`crate::rollout::engine::Rollout::observe`] is fed.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub sample: Sample,
    pub latency: Latency,
}

impl Default for Reading {
    fn default() -> Self {
        Reading {
            sample: Sample::default(),
            latency: (new_histogram(), new_histogram()),
        }
    }
}

impl PartialEq for Reading {
    fn eq(&self, other: &Self) -> bool {
        self.sample == other.sample
            && self.latency.0 == other.latency.0
            && self.latency.1 == other.latency.1
    }
}

fn counts_add(a: Counts, b: Counts) -> Counts {
    Counts {
        requests: a.requests + b.requests,
        failures: a.failures + b.failures,
    }
}

fn counts_sub(a: Counts, b: Counts) -> Counts {
    Counts {
        requests: a.requests.saturating_sub(b.requests),
        failures: a.failures.saturating_sub(b.failures),
    }
}

fn hist_sub(a: &Histogram<u64>, b: &Histogram<u64>) -> Histogram<u64> {
    let mut d = a.clone();
    if d.subtract(b).is_err() {
        // `b` is not an earlier reading of `a` (a histogram never loses counts): keep `a`.
        return a.clone();
    }
    d
}

/// `s += o`, counts only.
pub(crate) fn add_counts(s: &mut Sample, o: &Sample) {
    s.canary = counts_add(s.canary, o.canary);
    s.stable = counts_add(s.stable, o.stable);
    s.breaker_opens += o.breaker_opens;
    s.shadow = ShadowCounts {
        compared: s.shadow.compared + o.shadow.compared,
        mismatched: s.shadow.mismatched + o.shadow.mismatched,
    };
}

impl Reading {
    /// The sum of two replicas' (or two steps') counters.
    pub(crate) fn add(&mut self, other: &Reading) {
        add_counts(&mut self.sample, &other.sample);
        let _ = self.latency.0.add(&other.latency.0);
        let _ = self.latency.1.add(&other.latency.1);
    }

    /// What happened between `earlier` and this reading of the same counters.
    pub(crate) fn since(&self, earlier: &Reading) -> Reading {
        let (s, e) = (&self.sample, &earlier.sample);
        Reading {
            sample: Sample {
                canary: counts_sub(s.canary, e.canary),
                stable: counts_sub(s.stable, e.stable),
                breaker_opens: s.breaker_opens.saturating_sub(e.breaker_opens),
                shadow: s.shadow.since(e.shadow),
            },
            latency: (
                hist_sub(&self.latency.0, &earlier.latency.0),
                hist_sub(&self.latency.1, &earlier.latency.1),
            ),
        }
    }

    /// Whether every counter is at least `earlier`'s: a later reading of the same counters.
    pub(crate) fn covers(&self, earlier: &Reading) -> bool {
        let (s, e) = (&self.sample, &earlier.sample);
        s.canary.requests >= e.canary.requests
            && s.canary.failures >= e.canary.failures
            && s.stable.requests >= e.stable.requests
            && s.stable.failures >= e.stable.failures
            && s.breaker_opens >= e.breaker_opens
            && s.shadow.compared >= e.shadow.compared
            && s.shadow.mismatched >= e.shadow.mismatched
            && self.latency.0.len() >= earlier.latency.0.len()
            && self.latency.1.len() >= earlier.latency.1.len()
    }

    pub(crate) fn to_wire(&self) -> WireReading {
        let s = &self.sample;
        WireReading {
            canary: [s.canary.requests, s.canary.failures],
            stable: [s.stable.requests, s.stable.failures],
            breaker_opens: s.breaker_opens,
            shadow: [s.shadow.compared, s.shadow.mismatched],
            canary_latency: encode(&self.latency.0),
            stable_latency: encode(&self.latency.1),
        }
    }

    pub(crate) fn from_wire(w: &WireReading) -> Reading {
        let counts = |c: [u64; 2]| Counts {
            requests: c[0],
            failures: c[1],
        };
        Reading {
            sample: Sample {
                canary: counts(w.canary),
                stable: counts(w.stable),
                breaker_opens: w.breaker_opens,
                shadow: ShadowCounts {
                    compared: w.shadow[0],
                    mismatched: w.shadow[1],
                },
            },
            latency: (decode(&w.canary_latency), decode(&w.stable_latency)),
        }
    }
}

fn encode(h: &Histogram<u64>) -> Vec<u64> {
    h.iter_recorded()
        .flat_map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

fn decode(pairs: &[u64]) -> Histogram<u64> {
    let mut h = new_histogram();
    for p in pairs.chunks_exact(2) {
        h.saturating_record_n(p[0], p[1]);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn reading(canary: (u64, u64), stable: (u64, u64), latencies_ms: &[u64]) -> Reading {
        let mut r = Reading::default();
        r.sample.canary = Counts {
            requests: canary.0,
            failures: canary.1,
        };
        r.sample.stable = Counts {
            requests: stable.0,
            failures: stable.1,
        };
        for ms in latencies_ms {
            r.latency.0.saturating_record(ms * 1000);
        }
        r
    }

    #[test]
    fn a_reading_survives_the_wire() {
        let mut r = reading((120, 3), (2000, 1), &[5, 5, 7, 250]);
        r.sample.breaker_opens = 1;
        r.sample.shadow = ShadowCounts {
            compared: 10,
            mismatched: 2,
        };
        let wire = serde_json::to_string(&r.to_wire()).unwrap();
        let back = Reading::from_wire(&serde_json::from_str(&wire).unwrap());
        assert_eq!(back.sample, r.sample);
        assert_eq!(back.latency.0.len(), 4);
        assert_eq!(
            back.latency.0.value_at_quantile(0.99),
            r.latency.0.value_at_quantile(0.99)
        );
    }

    #[test]
    fn readings_add_and_diff() {
        let mut sum = reading((10, 1), (100, 0), &[5]);
        sum.add(&reading((20, 2), (50, 1), &[9, 9]));
        assert_eq!(
            sum.sample.canary,
            Counts {
                requests: 30,
                failures: 3
            }
        );
        assert_eq!(
            sum.sample.stable,
            Counts {
                requests: 150,
                failures: 1
            }
        );
        assert_eq!(sum.latency.0.len(), 3);
        let d = sum.since(&reading((10, 1), (100, 0), &[5]));
        assert_eq!(
            d.sample.canary,
            Counts {
                requests: 20,
                failures: 2
            }
        );
        assert_eq!(d.latency.0.len(), 2);
        assert!(sum.covers(&reading((10, 1), (100, 0), &[5])));
        assert!(!reading((10, 1), (100, 0), &[5]).covers(&sum));
    }
}
