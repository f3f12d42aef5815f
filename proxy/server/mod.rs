//! Sockets: binding, accepting, serving connections, and draining them.

pub mod accept;
pub mod clock;
pub mod conn;
pub mod limits;
pub mod listener;
pub(crate) mod proto;
pub mod shutdown;
pub mod sniff;
pub mod tls;
pub mod workers;
