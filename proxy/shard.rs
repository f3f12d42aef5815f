//! Which worker thread this is: per-worker state (connection pools, statistics shards) is
//! indexed by it so that workers never share a lock on the hot path.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker index (0 outside worker threads).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Marks this thread as worker `i`; called once by each worker thread.
pub fn set_current(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// A worker's own piece of shared state, on cache lines of its own: workers write their pieces
/// on every request, and two pieces on one line would bounce it between cores (false sharing).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);
