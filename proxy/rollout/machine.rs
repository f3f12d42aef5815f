//! A rollout's states and the only transitions allowed between them.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// Known, not started yet (the controller starts it on its first tick).
    Pending,
    /// At step `step` of the spec's steps.
    Progressing { step: usize },
    /// Held at `step` by an operator or a failed gate (`on_failure: pause`).
    Paused { step: usize },
    /// The canary takes all the traffic.
    Promoted,
    /// Gates or abort rules sent all the traffic back to stable.
    RolledBack,
    /// An operator sent all the traffic back to stable.
    Aborted,
    /// Stable takes all the traffic until an operator resumes (at step 0) or aborts: where the
    /// state could not be trusted (an unreadable state file), the rollout fails closed here.
    Held,
}

impl State {
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Promoted | State::RolledBack | State::Aborted)
    }

    /// The step whose weights are in force, when one is.
    pub fn step(self) -> Option<usize> {
        match self {
            State::Progressing { step } | State::Paused { step } => Some(step),
            _ => None,
        }
    }

    /// Every [`State::name`], for the gauge that exports each state
    /// (`switchyard_rollout_state`).
    pub const NAMES: [&'static str; 7] = [
        "pending",
        "progressing",
        "paused",
        "promoted",
        "rolled-back",
        "aborted",
        "held",
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Progressing { .. } => "progressing",
            State::Paused { .. } => "paused",
            State::Promoted => "promoted",
            State::RolledBack => "rolled-back",
            State::Aborted => "aborted",
            State::Held => "held",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Progressing { step } => write!(f, "progressing(step {step})"),
            State::Paused { step } => write!(f, "paused(step {step})"),
            s => f.write_str(s.name()),
        }
    }
}

/// Whether `from -> to` is a legal move for a rollout of `steps` steps.
pub fn legal(from: State, to: State, steps: usize) -> bool {
    use State::*;
    let valid = |s: usize| s < steps;
    match (from, to) {
        (Pending, Progressing { step: 0 } | Aborted | Held) => true,
        (Held, Progressing { step: 0 } | Aborted) => true,
        (Progressing { step: a }, Progressing { step: b }) => valid(b) && b == a + 1,
        (Progressing { step: a }, Paused { step: b }) => a == b,
        (Paused { step: a }, Progressing { step: b }) => valid(b) && (b == a || b == a + 1),
        (Progressing { .. } | Paused { .. }, Promoted | RolledBack | Aborted) => true,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a rollout cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: State,
    pub to: State,
}

/// Checks a move; the caller applies it.
pub fn check(from: State, to: State, steps: usize) -> Result<(), IllegalTransition> {
    if legal(from, to, steps) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    #[test]
    fn names_lists_every_state() {
        let all = [
            Pending,
            Progressing { step: 0 },
            Paused { step: 0 },
            Promoted,
            RolledBack,
            Aborted,
            Held,
        ];
        assert_eq!(all.map(State::name), State::NAMES);
    }

    #[test]
    fn the_walk_of_a_healthy_canary_is_legal() {
        let walk = [
            Pending,
            Progressing { step: 0 },
            Progressing { step: 1 },
            Paused { step: 1 },
            Progressing { step: 1 },
            Progressing { step: 2 },
            Progressing { step: 3 },
            Promoted,
        ];
        for w in walk.windows(2) {
            assert!(legal(w[0], w[1], 4), "{} -> {}", w[0], w[1]);
        }
    }

    #[test]
    fn illegal_moves_are_refused() {
        for (from, to) in [
            (Pending, Progressing { step: 1 }),
            (Pending, Promoted),
            (Progressing { step: 0 }, Progressing { step: 2 }),
            (Progressing { step: 2 }, Progressing { step: 1 }),
            (Progressing { step: 3 }, Progressing { step: 4 }),
            (Progressing { step: 1 }, Paused { step: 0 }),
            (Paused { step: 1 }, Progressing { step: 3 }),
            (Promoted, RolledBack),
            (RolledBack, Progressing { step: 0 }),
            (Aborted, Promoted),
            (Promoted, Paused { step: 0 }),
            (Paused { step: 0 }, Pending),
            (Held, Promoted),
            (Held, Paused { step: 0 }),
            (Held, Progressing { step: 1 }),
            (Progressing { step: 0 }, Held),
            (Aborted, Held),
        ] {
            assert!(check(from, to, 4).is_err(), "{from} -> {to}");
        }
    }

    #[test]
    fn every_active_state_can_end() {
        for from in [Progressing { step: 0 }, Paused { step: 2 }] {
            for to in [Promoted, RolledBack, Aborted] {
                assert!(legal(from, to, 4));
            }
        }
        assert!(legal(Pending, Aborted, 4));
        assert!(legal(Pending, Held, 4) && !Held.is_terminal());
        assert!(legal(Held, Progressing { step: 0 }, 4) && legal(Held, Aborted, 4));
        assert!(Promoted.is_terminal() && RolledBack.is_terminal() && Aborted.is_terminal());
        assert!(!Paused { step: 0 }.is_terminal());
    }

    #[test]
    fn states_serialize_with_their_step() {
        let s = serde_json::to_value(Progressing { step: 2 }).unwrap();
        assert_eq!(s, serde_json::json!({ "state": "progressing", "step": 2 }));
        let back: State = serde_json::from_value(s).unwrap();
        assert_eq!(back, Progressing { step: 2 });
    }
}
