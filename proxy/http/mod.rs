//! The request path: handler -> route -> split -> pick -> forward. Decisions are pure functions
//! over tables the snapshot compiled; side effects stay in `handler` and `forward`.

pub mod forward;
pub mod handler;
pub mod headers;
pub mod pick;
pub mod route;
pub mod split;
