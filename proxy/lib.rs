//! switchyard: a layer-7 traffic-splitting reverse proxy.
//!
//! # Layout
//!
//! Data flows one way: listener -> handler -> route -> split -> pick -> forward -> counters;
//! the reloader is the one writer of the snapshot the request path reads.
//!
//! - [`app`]: wiring: config -> registry -> snapshot; listeners, reloader, watcher, admin;
//!   graceful shutdown.
//! - [`config`]: YAML -> [`config::file`] (serde, as written, read past structural errors by
//!   `config::repair`) -> [`config::validate`] (every error with its YAML path) ->
//!   [`config::model`] (validated, immutable); [`config::read`] reads only regular files of at
//!   most 16 MiB. No import cycle inside: [`config::errors`] is the leaf.
//! - [`reload`]: [`reload::watcher`] (notify, on its own thread; only signals; re-arms when a
//!   directory is replaced), [`reload::loader`] (file reads off the workers, with a deadline),
//!   [`reload::reloader`] (the one writer), [`reload::snapshot`] (what the request path reads,
//!   swapped with `ArcSwap`).
//! - [`server`]: [`server::listener`] (socket2, accept, reconcile on reload),
//!   [`server::accept`] (backoff and sparse logs when accept fails),
//!   [`server::conn`] (one connection, HTTP/1.1 or h2c), [`server::tls`] (TLS listeners:
//!   certificates by SNI, reloaded when their files change), [`server::shutdown`] (stop, drain),
//!   [`server::limits`] (a listener's limits and their counters), [`server::sniff`] (raw
//!   HTTP/1 heads watched for framing hyper repairs quietly).
//! - [`http`]: [`http::handler`] (loads the snapshot once) -> [`http::route`] ->
//!   [`http::split`] -> [`http::pick`] -> [`http::forward`]; [`http::headers`] rewrites;
//!   [`http::validate`] refuses smuggling and malformed heads; [`http::body_guard`] holds a
//!   request body to the listener's size and rate limits; [`http::ratelimit`] (token buckets,
//!   before the split) and [`http::fault`] (injected delays and aborts, after it).
//!   Route, split and pick are pure functions over tables compiled per snapshot.
//!   [`http::shadow`] copies sampled requests to a route's shadow upstream in tasks of their
//!   own; [`http::compare`] (pure) diffs the two answers.
//! - [`backend`]: [`backend::registry`] (state by upstream + address, kept across reloads and
//!   re-resolution), [`backend::state`], [`backend::pool`] (a connection pool per backend),
//!   [`backend::tls`] (TLS and mTLS to backends), [`backend::health`] (active checks),
//!   [`backend::discovery`] (DNS: a task per discovered upstream looks its name up and sends
//!   the addresses to the reloader).
//! - [`stats`]: lock-free counters kept across reloads; [`stats::prometheus`], the one writer
//!   of the Prometheus text format.
//! - [`rollout`]: canary and blue-green rollouts: a pure policy of sequential tests with stated
//!   error rates, a state machine, a controller that sends weights to the reloader, and a
//!   journal.
//! - [`fleet`]: with `cluster:`, the replicas of a fleet act as one through etcd: one rollout
//!   state, a leader that decides on everyone's numbers, aborts and commands from anywhere.
//! - [`admin`]: the admin HTTP API, the ops listener (probes and metrics only), and the
//!   admin client for the CLI; `/metrics` reads every statistic through its accessors in one
//!   module, from one table of families.
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
pub mod fleet;
pub mod http;
pub mod reload;
pub mod rollout;
pub mod server;
pub mod shard;
pub mod shared;
pub mod stats;
