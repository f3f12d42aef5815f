//! The request path: handler (loads the snapshot once) -> route -> split -> pick -> Attempt
//! (tries, retries, one classified verdict per try) -> forward (+ shadow) -> exchange (the
//! request's record, finished once when its response ends). Decisions are pure functions over
//! the routing tables and the classification; side effects stay at the edges.

pub(crate) mod access;
pub(crate) mod attempt;
pub(crate) mod classify;
pub(crate) mod compare;
pub(crate) mod exchange;
pub(crate) mod fault;
pub(crate) mod forward;
pub(crate) mod grpc;
pub(crate) mod handler;
pub mod headers;
pub(crate) mod local;
pub(crate) mod record;
pub(crate) mod shadow;
pub(crate) mod spans;
pub mod validate;

pub(crate) use handler::Proxy;
