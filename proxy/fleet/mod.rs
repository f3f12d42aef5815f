//! A fleet: the replicas that share a `cluster.name` act as one through etcd (absent without
//! `cluster:`, where [`crate::rollout::Controller`] runs rollouts on this process's numbers).
//!
//! - One rollout state per route lives in etcd ([`state::FleetState`]); every replica watches
//!   it and applies its weights through the reloader (still the one writer of the snapshot),
//!   so every replica routes alike and a sticky user gets one version everywhere.
//! - One replica leads, holding a key bound to its lease; only the leader takes gate decisions
//!   (step, promote, roll back), on the sum of every replica's numbers ([`sum::FleetSum`]),
//!   and writes them in transactions conditioned on still holding the leadership.
//! - Any replica aborts: its own abort rules trip on its own numbers, it sends the canary no
//!   more traffic at once and writes the abort (conditioned on the state it saw); any replica
//!   takes an operator's command the same way.
//! - A replica that joins takes the fleet's state before it serves; one whose spec differs
//!   follows the fleet's weights and does not judge ([`decide`]).
//! - etcd away: traffic goes on with the weights in force, steps wait, local aborts act and are
//!   written when etcd answers again.
//!
//! Layout: [`etcd`] (the client, over etcd's JSON gateway), [`session`] (lease, leadership,
//! watches, publishing, writes: the I/O), [`controller`] (the rollouts: decisions, commands,
//! weights), [`state`] and [`sum`] (what is stored and how it adds up), [`decide`] (pure
//! decisions), [`status`] (what `/status` and `/metrics` show).

pub(crate) mod controller;
pub(crate) mod decide;
pub(crate) mod etcd;
pub(crate) mod next;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod sum;
pub(crate) mod view;

pub use controller::FleetController;
pub use status::{FleetHandle, FleetNumbers};

pub(crate) use crate::rollout::controller::unix_ms;

/// Where a fleet's keys live: `/switchyard/<name>/`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    root: String,
}

impl Keys {
    pub(crate) fn new(fleet: &str) -> Keys {
        Keys {
            root: format!("/switchyard/{fleet}/"),
        }
    }

    /// What every replica watches: the leader and the rollouts.
    pub(crate) fn control(&self) -> String {
        format!("{}control/", self.root)
    }

    pub(crate) fn leader(&self) -> String {
        format!("{}control/leader", self.root)
    }

    pub(crate) fn rollouts(&self) -> String {
        format!("{}control/rollouts/", self.root)
    }

    pub(crate) fn rollout(&self, route: &str) -> String {
        format!("{}{route}", self.rollouts())
    }

    /// Every replica's report (bound to its lease); the leader watches them.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes())
    }
}
