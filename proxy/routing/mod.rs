//! The tables the request path reads, one set per snapshot: which route a request takes
//! ([`route`]), which upstream of its split ([`split`]), which backend of that upstream
//! ([`upstream`], [`pick`]), and the route's rate limit, fault and shadow settings. The reloader
//! builds them (`reload::snapshot`); `http` reads them; this module imports neither.
//!
//! What must outlive a snapshot (statistics, token buckets, retry budgets, shadow admission)
//! lives in the [`keeper::Keeper`], which hands the same objects to every snapshot that keeps
//! the route.

pub(crate) mod budget;
pub(crate) mod fault;
pub(crate) mod keeper;
pub(crate) mod pick;
pub(crate) mod ratelimit;
pub mod route;
pub(crate) mod shadow;
pub mod snapshot;
pub mod split;
pub(crate) mod upstream;

pub use route::Router;
pub use snapshot::Snapshot;
pub(crate) use snapshot::{BackendRef, RouteRuntime, Target};
pub use split::Split;
pub(crate) use upstream::UpstreamRuntime;
