//! Sockets: binding, accepting, serving connections, and draining them.

pub mod clock;
pub mod conn;
pub mod listener;
pub mod shutdown;
pub mod tls;
pub mod workers;
