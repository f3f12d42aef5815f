//! Progressive delivery: canary and blue-green rollouts driven by live statistics.
//!
//! - [`policy`]: pure: a step's numbers in, a [`policy::Decision`] out (inputs, thresholds,
//!   each gate's test and result, verdict, reason).
//! - [`evidence`]: the sequential tests behind the gates: e-values with stated error rates,
//!   valid however often they are looked at.
//! - [`machine`]: the states and the only legal transitions between them.
//! - [`engine`]: one route's rollout: its step window, abort window and decisions.
//! - [`controller`]: the task that ticks, reads the statistics, and sends weights to the
//!   reloader; [`handle::RolloutHandle`] is what the admin API uses.
//! - [`journal`]: the audit journal (JSON lines) and the atomically replaced state file.

pub mod controller;
pub mod engine;
pub mod evidence;
pub mod handle;
pub mod journal;
pub mod machine;
pub mod policy;

pub use controller::Controller;
pub use engine::Op;
pub use handle::RolloutHandle;
pub use machine::State;
