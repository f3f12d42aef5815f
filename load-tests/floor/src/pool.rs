//! Idle keep-alive connections to the backend, shared by every client connection of the
//! worker thread, as nginx's `keepalive N` upstream cache is shared by a worker's connections.
//! A thread-local, not a lock: one worker thread owns it (the runtime is current_thread).

use std::cell::RefCell;

use tokio::net::TcpStream;

/// nginx's `keepalive 128` in the benchmark's config.
const MAX_IDLE: usize = 128;

thread_local! {
    static IDLE: RefCell<Vec<TcpStream>> = const { RefCell::new(Vec::new()) };
}

/// The most recently used idle connection (the warmest), if any.
pub(crate) fn take() -> Option<TcpStream> {
    IDLE.with(|idle| idle.borrow_mut().pop())
}

/// Returns a connection after a complete exchange; beyond `MAX_IDLE` it is closed.
pub(crate) fn give(s: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push(s);
        }
    });
}
