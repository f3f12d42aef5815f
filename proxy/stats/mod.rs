//! What switchyard counts and measures: counters and histograms behind methods (the request
//! path says what happened; it never stores into an atomic), and their Prometheus exposition.

pub mod counters;
pub mod histogram;
pub mod limits;
pub mod outcome;
pub mod prometheus;
pub mod shadow;
pub mod target;
pub mod tls;
pub mod traffic;
pub mod window;

pub use counters::{GlobalCounters, RequestCounters};
pub use histogram::{Buckets, Percentiles, Recorder};
pub use outcome::Outcome;
pub use shadow::{MismatchKind, ShadowCounts, ShadowResult, ShadowStats};
pub use target::TargetStats;
pub use window::{Totals, WindowCounts};
