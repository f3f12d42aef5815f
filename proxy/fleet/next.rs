//! The fleet's next state for a route, as pure functions of the one it replaces: a transition
//! (a gate decision, an operator's command, an abort), a rollout that starts, one that starts
//! again from a saved copy. Every new state gets a new epoch (its step window).

use serde_json::Value;

use super::state::{FleetState, KEEP_DECISIONS, KEEP_HISTORY};
use crate::config::rollout::RolloutSpec;
use crate::rollout::journal::Entry;
use crate::rollout::machine::State;

/// The epoch after `prev`: never reused, also after etcd lost the fleet's state (the wall
/// clock in ms, when that is later).
pub(crate) fn next_epoch(prev: u64, now_ms: u64) -> u64 {
    (prev + 1).max(now_ms)
}

/// Who writes, and when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Author<'a> {
    pub node: &'a str,
    pub now_ms: u64,
}

fn push<T>(list: &mut Vec<T>, item: T, keep: usize) {
    list.push(item);
    if list.len() > keep {
        list.drain(..list.len() - keep);
    }
}

/// `prev` after a transition to `to` (the canary at `canary_weight`), recorded in `entry`, with
/// the decision behind it if there was one. A pause keeps its step's window; anything else
/// starts a new one.
pub(crate) fn after(
    prev: &FleetState,
    to: State,
    canary_weight: u32,
    entry: Entry,
    decision: Option<Value>,
    by: Author<'_>,
) -> FleetState {
    let mut next = prev.clone();
    next.state = to;
    next.canary_weight = canary_weight;
    next.epoch = next_epoch(prev.epoch, by.now_ms);
    if !matches!(to, State::Paused { .. }) {
        next.step_started_ms = by.now_ms;
    }
    next.by = by.node.to_owned();
    next.updated_ms = by.now_ms;
    if let Some(d) = decision {
        push(&mut next.decisions, d, KEEP_DECISIONS);
    }
    push(&mut next.history, entry, KEEP_HISTORY);
    next
}

/// A rollout of `spec` in `state` (canary at `canary_weight`) that the fleet did not have:
/// `history` is what is known of it (a saved copy's, or a replaced rollout's), `entry` says
/// why it starts (none for a copy taken as it is). `prev_epoch` is the epoch of the state it
/// replaces (0: none).
#[allow(clippy::too_many_arguments)]
pub(crate) fn started(
    spec: &RolloutSpec,
    state: State,
    canary_weight: u32,
    mut history: Vec<Entry>,
    entry: Option<Entry>,
    prev_epoch: u64,
    by: Author<'_>,
) -> FleetState {
    if let Some(entry) = entry {
        push(&mut history, entry, KEEP_HISTORY);
    }
    FleetState {
        fingerprint: spec.fingerprint(),
        spec: serde_json::to_value(spec).unwrap_or(Value::Null),
        stable: spec.stable.clone(),
        canary: spec.canary.clone(),
        steps: spec.step_count(),
        state,
        canary_weight,
        epoch: next_epoch(prev_epoch, by.now_ms),
        step_started_ms: by.now_ms,
        by: by.node.to_owned(),
        updated_ms: by.now_ms,
        decisions: Vec::new(),
        history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(to: State) -> Entry {
        Entry {
            time_ms: 1,
            route: "r".into(),
            from: State::Progressing { step: 0 },
            to,
            reason: "x".into(),
            weights: vec![],
            generation: 1,
            writer: "a/1".into(),
        }
    }

    fn state(epoch: u64) -> FleetState {
        FleetState {
            fingerprint: "f".into(),
            spec: Value::Null,
            stable: "s".into(),
            canary: "c".into(),
            steps: 4,
            state: State::Progressing { step: 0 },
            canary_weight: 5,
            epoch,
            step_started_ms: 100,
            by: "a".into(),
            updated_ms: 100,
            decisions: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn epochs_only_grow() {
        assert_eq!(next_epoch(5, 3), 6);
        assert_eq!(next_epoch(5, 1_000), 1_000);
        assert_eq!(next_epoch(0, 0), 1);
    }

    #[test]
    fn a_step_starts_a_window_and_a_pause_keeps_it() {
        let by = Author {
            node: "b",
            now_ms: 5_000,
        };
        let s = state(7);
        let next = after(
            &s,
            State::Progressing { step: 1 },
            20,
            entry(State::Progressing { step: 1 }),
            Some(serde_json::json!({"verdict": "promote"})),
            by,
        );
        assert_eq!(
            (next.epoch, next.step_started_ms, next.by.as_str()),
            (5_000, 5_000, "b")
        );
        assert_eq!((next.history.len(), next.decisions.len()), (1, 1));
        let paused = after(
            &s,
            State::Paused { step: 0 },
            5,
            entry(State::Paused { step: 0 }),
            None,
            by,
        );
        assert_eq!(paused.step_started_ms, 100);
        assert!(paused.epoch > s.epoch);
    }

    #[test]
    fn history_and_decisions_are_bounded() {
        let mut s = state(1);
        for i in 0..(KEEP_HISTORY + 5) as u64 {
            s = after(
                &s,
                State::Paused { step: 0 },
                5,
                entry(State::Paused { step: 0 }),
                Some(Value::from(i)),
                Author {
                    node: "a",
                    now_ms: i,
                },
            );
        }
        assert_eq!(s.history.len(), KEEP_HISTORY);
        assert_eq!(s.decisions.len(), KEEP_DECISIONS);
        assert_eq!(
            s.decisions.last(),
            Some(&Value::from(KEEP_HISTORY as u64 + 4))
        );
    }
}
