//! switchyard: a layer-7 traffic-splitting reverse proxy.
//!
//! # Layout
//!
//! Data flows one way: listener -> handler -> route -> split -> pick -> forward -> counters;
//! the reloader is the one writer of the snapshot the request path reads.
//!
//! - [`app`]: wiring: config -> registry -> snapshot; listeners, reloader, watcher, admin;
//!   graceful shutdown.
//! - [`config`]: YAML -> [`config::file`] (serde, as written) -> [`config::validate`] (every
//!   error with its YAML path) -> [`config::model`] (validated, immutable).
//! - [`reload`]: [`reload::watcher`] (notify; only signals), [`reload::reloader`] (the one
//!   writer), [`reload::snapshot`] (what the request path reads, swapped with `ArcSwap`).
//! - [`server`]: [`server::listener`] (socket2, accept, reconcile on reload),
//!   [`server::conn`] (one connection, HTTP/1.1 or h2c), [`server::shutdown`] (stop, drain).
//! - [`http`]: [`http::handler`] (loads the snapshot once) -> [`http::route`] ->
//!   [`http::split`] -> [`http::pick`] -> [`http::forward`]; [`http::headers`] rewrites.
//!   Route, split and pick are pure functions over tables compiled per snapshot.
//!   [`http::shadow`] copies sampled requests to a route's shadow upstream in tasks of their
//!   own; [`http::compare`] (pure) diffs the two answers.
//! - [`backend`]: [`backend::registry`] (state by upstream + address, kept across reloads),
//!   [`backend::state`], [`backend::transport`] (a connection pool per backend).
//! - [`stats`]: lock-free counters kept across reloads; Prometheus text exposition.
//! - [`admin`]: the admin HTTP API and its client for the CLI.
//! - [`body`]: the streaming request and response bodies; [`error`]: one error type, one map
//!   to status codes; [`shared`]: what every task reads; [`shard`]: which worker thread this
//!   is; [`demo`]: the built-in demo.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod reload;
pub mod server;
pub mod shard;
pub mod shared;
pub mod stats;
