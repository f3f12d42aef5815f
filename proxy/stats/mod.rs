//! What switchyard counts and measures: counters and histograms behind methods (the request
//! path says what happened; it never stores into an atomic), and their Prometheus exposition.

pub mod clock;
pub(crate) mod counters;
pub mod histogram;
pub mod limits;
pub(crate) mod outcome;
pub(crate) mod prometheus;
pub mod shadow;
pub(crate) mod target;
pub(crate) mod tls;
pub(crate) mod traffic;
pub mod window;

pub use clock::Tick;
pub(crate) use counters::{GlobalCounters, RequestCounters};
pub use histogram::Recorder;
pub(crate) use histogram::{Buckets, Percentiles};
pub(crate) use outcome::Outcome;
pub(crate) use shadow::{MismatchKind, ShadowCounts, ShadowResult, ShadowStats};
pub(crate) use target::TargetStats;
pub(crate) use window::{Totals, WindowCounts};
