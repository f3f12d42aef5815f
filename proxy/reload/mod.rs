//! Hot reload: the watcher signals, the reloader (the one writer) validates and builds, the
//! snapshot is swapped atomically.

pub mod loader;
pub mod reloader;
pub mod snapshot;
pub mod watcher;

pub use reloader::{ConfigSource, ReloadHandle, ReloadOutcome, ReloadResult, Reloader};
