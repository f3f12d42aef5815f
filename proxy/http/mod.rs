//! The request path: handler -> route -> attempt (choose: split -> pick; forward; retry). Decisions are pure functions
//! over tables the snapshot compiled; side effects stay in `handler` and `forward`.

pub mod attempt;
pub mod body_guard;
pub mod choose;
pub mod compare;
pub mod fault;
pub mod forward;
pub mod handler;
pub mod headers;
pub mod pick;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod shadow;
pub mod split;
pub mod validate;
