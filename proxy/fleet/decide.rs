//! The fleet's decisions that need no I/O, as pure functions:
//!
//! - [`weights`]: what a replica routes with, given its config, the fleet's state for the route
//!   and a local abort (joining, mismatched specs, etcd away);
//! - [`agreed`] and [`plan`]: what the leader does with a route: judge its rollout, start one
//!   (the fleet has none), replace it (every replica has a new spec), remove it (no replica has
//!   one any more) or hold (replicas disagree on the spec: a config change still rolling out);
//! - [`elapsed_ms`]: how far into its step a rollout is, on the wall clock (a new leader
//!   continues the window of the step it finds).

use crate::config::rollout::RolloutSpec;

use super::state::FleetState;

/// The route's weights in split order, or `None` for the config's own.
///
/// - The fleet has a rollout and this replica's split names its stable and canary: the fleet's
///   canary share (0 while a local abort waits to reach etcd), whatever this replica's spec
///   says: every replica routes alike, so a sticky user gets the same version everywhere.
/// - The fleet's upstreams are not in this split (its config is behind or ahead): its own stable
///   takes all, never a canary the fleet is not rolling out.
/// - The fleet's state is not known (not joined yet, or no rollout there yet) and this replica
///   has a rollout: its stable takes all until the fleet says otherwise.
/// - Neither has a rollout: the config's weights.
pub(crate) fn weights(
    split: &[(&str, u32)],
    local: Option<&RolloutSpec>,
    fleet: Option<&FleetState>,
    aborted_here: bool,
) -> Option<Vec<u32>> {
    let has = |name: &str| split.iter().any(|(n, _)| *n == name);
    let (stable, canary, share) = match (fleet, local) {
        (Some(f), _) if has(&f.stable) && has(&f.canary) => (
            f.stable.as_str(),
            f.canary.as_str(),
            if aborted_here {
                0
            } else {
                f.canary_weight.min(100)
            },
        ),
        (_, Some(spec)) if has(&spec.stable) && has(&spec.canary) => {
            (spec.stable.as_str(), spec.canary.as_str(), 0)
        }
        _ => return None,
    };
    Some(
        split
            .iter()
            .map(|&(name, configured)| {
                if name == canary {
                    share
                } else if name == stable {
                    100 - share
                } else {
                    configured
                }
            })
            .collect(),
    )
}

/// The spec every live replica has for a route: `Some(None)` when none has a rollout there,
/// `None` when they differ (or nobody reported).
pub(crate) fn agreed<'a>(
    mut fingerprints: impl Iterator<Item = Option<&'a str>>,
) -> Option<Option<&'a str>> {
    let first = fingerprints.next()?;
    fingerprints.all(|f| f == first).then_some(first)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Judge the fleet's rollout on the fleet's numbers.
    Judge,
    /// The fleet has no rollout for the route and every replica has this spec: start one.
    Create,
    /// Every replica has a spec other than the fleet's: a new rollout replaces it.
    Replace,
    /// No replica has a rollout for the route any more: the fleet's goes.
    Remove,
    /// Replicas disagree on the spec: no step advances until they agree (aborts still act).
    Hold,
    Nothing,
}

/// What the leader does with one route, given the fleet's spec for it and what the replicas
/// (the leader among them) agree on.
pub(crate) fn plan(fleet: Option<&str>, agreed: Option<Option<&str>>) -> Plan {
    match (fleet, agreed) {
        (_, None) => Plan::Hold,
        (Some(_), Some(None)) => Plan::Remove,
        (None, Some(None)) => Plan::Nothing,
        (None, Some(Some(_))) => Plan::Create,
        (Some(f), Some(Some(a))) if f == a => Plan::Judge,
        (Some(_), Some(Some(_))) => Plan::Replace,
    }
}

/// Milliseconds since `started_ms` (0 when the clocks disagree the other way).
pub(crate) fn elapsed_ms(started_ms: u64, now_ms: u64) -> u64 {
    now_ms.saturating_sub(started_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::State;

    fn spec(stable: &str, canary: &str) -> RolloutSpec {
        let yaml = format!(
            "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams: {{ {stable}: {{ backends: [\"127.0.0.1:1\"] }}, {canary}: {{ backends: [\"127.0.0.1:2\"] }} }}\nroutes: [{{ name: r, split: [{{ upstream: {stable}, weight: 100 }}, {{ upstream: {canary}, weight: 0 }}], rollout: {{ strategy: canary, stable: {stable}, canary: {canary} }} }}]\n"
        );
        let c = crate::config::parse_str(&yaml).unwrap();
        (**c.routes[0].rollout.as_ref().unwrap()).clone()
    }

    fn fleet(stable: &str, canary: &str, share: u32) -> FleetState {
        FleetState {
            fingerprint: "f".into(),
            spec: serde_json::Value::Null,
            stable: stable.into(),
            canary: canary.into(),
            steps: 4,
            state: State::Progressing { step: 1 },
            canary_weight: share,
            epoch: 2,
            step_started_ms: 0,
            by: "a".into(),
            updated_ms: 0,
            decisions: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn a_replica_routes_with_the_fleets_share() {
        let split = [("blue", 100), ("green", 0), ("extra", 7)];
        let f = fleet("blue", "green", 20);
        let s = spec("blue", "green");
        assert_eq!(
            weights(&split, Some(&s), Some(&f), false),
            Some(vec![80, 20, 7])
        );
        // Another spec locally (its ConfigMap is behind): still the fleet's share.
        let other = spec("blue", "green-next");
        assert_eq!(
            weights(&split, Some(&other), Some(&f), false),
            Some(vec![80, 20, 7])
        );
        // A local abort waiting to reach etcd: canary 0 here at once.
        assert_eq!(
            weights(&split, Some(&s), Some(&f), true),
            Some(vec![100, 0, 7])
        );
    }

    #[test]
    fn a_replica_that_cannot_follow_or_has_not_joined_sends_nothing_to_a_canary() {
        let split = [("blue", 100), ("green-next", 30)];
        let f = fleet("blue", "green", 20);
        let s = spec("blue", "green-next");
        assert_eq!(
            weights(&split, Some(&s), Some(&f), false),
            Some(vec![100, 0])
        );
        assert_eq!(weights(&split, Some(&s), None, false), Some(vec![100, 0]));
        assert_eq!(weights(&split, None, None, false), None);
        assert_eq!(weights(&[("x", 1)], None, Some(&f), false), None);
    }

    #[test]
    fn agreement_needs_every_replica() {
        assert_eq!(agreed([Some("a"), Some("a")].into_iter()), Some(Some("a")));
        assert_eq!(agreed([None, None].into_iter()), Some(None));
        assert_eq!(agreed([Some("a"), Some("b")].into_iter()), None);
        assert_eq!(agreed([Some("a"), None].into_iter()), None);
        assert_eq!(agreed(std::iter::empty()), None);
    }

    #[test]
    fn the_leader_judges_starts_replaces_removes_or_holds() {
        assert_eq!(plan(Some("a"), Some(Some("a"))), Plan::Judge);
        assert_eq!(plan(None, Some(Some("a"))), Plan::Create);
        assert_eq!(plan(Some("a"), Some(Some("b"))), Plan::Replace);
        assert_eq!(plan(Some("a"), Some(None)), Plan::Remove);
        assert_eq!(plan(Some("a"), None), Plan::Hold);
        assert_eq!(plan(None, None), Plan::Hold);
        assert_eq!(plan(None, Some(None)), Plan::Nothing);
    }

    #[test]
    fn elapsed_never_goes_negative() {
        assert_eq!(elapsed_ms(1_000, 4_500), 3_500);
        assert_eq!(elapsed_ms(5_000, 4_500), 0);
    }
}
