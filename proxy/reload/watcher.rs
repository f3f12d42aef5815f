//! Watches the config file (see [`crate::watch`]): each settled change asks the reloader for a
//! reload.

use std::path::PathBuf;

use super::reloader::ReloadHandle;
pub use crate::watch::WatchGuard;

/// Starts watching `files`; each settled change calls `handle.trigger()`.
pub fn watch(files: &[PathBuf], handle: ReloadHandle) -> notify::Result<WatchGuard> {
    crate::watch::watch_with(files, "config", move || handle.trigger())
}
