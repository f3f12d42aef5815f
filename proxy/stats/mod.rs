//! What switchyard counts and measures, and how it is exposed.

pub mod budget;
pub mod counters;
pub mod histogram;
pub mod mirror;
pub mod outcome;
pub mod prometheus;
pub mod registry;
pub mod shadow;
pub mod target;
pub mod tls;
pub mod traffic;
pub mod window;

pub use budget::RetryBudget;
pub use counters::{GlobalCounters, RequestCounters};
pub use histogram::{Buckets, Percentiles, Recorder};
pub use mirror::{MirrorStats, ShadowResult};
pub use outcome::Outcome;
pub use registry::StatsRegistry;
pub use shadow::{ShadowCounts, ShadowStats};
pub use target::TargetStats;
pub use window::{Counts, WindowCounts};
