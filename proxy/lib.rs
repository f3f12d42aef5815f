//! switchyard: a layer-7 traffic-splitting reverse proxy.
//!
//! # Layout
//!
//! Data flows one way: listener -> handler -> route -> split -> pick -> Attempt -> forward
//! (+ shadow) -> exchange (the request's record, counted once) -> rollout controller ->
//! reloader -> next snapshot. Imports follow the same order and never go back up: nothing
//! imports `http`, `rollout` or `admin` from below them, and no module imports another that
//! imports it (`tests/layering.rs` checks both, for top-level modules and the files inside each).
//!
//! From the bottom up:
//!
//! - [`shard`]: which worker thread this is; [`error`]: one error type, one map to status
//!   codes; [`watch`]: signals when watched files change (directories watched, re-armed when
//!   replaced, on a thread of its own); [`config`]: YAML -> [`config::file`] (serde, as written, read past structural
//!   errors by `config::repair`) -> [`config::validate`] (every error with its YAML path) ->
//!   [`config::model`] (validated, immutable); [`config::read`] reads only regular files of at
//!   most 16 MiB; [`config::errors`] is the leaf.
//! - [`stats`]: counters and histograms behind methods (the request path says what happened,
//!   it never stores into an atomic); [`stats::prometheus`], the one writer of the Prometheus
//!   text format.
//! - `body`: the request and response bodies of a proxied exchange, and the listener's limits
//!   on a request body as it streams.
//! - [`backend`]: [`backend::registry`] (state by upstream + address, kept across reloads and
//!   re-resolution), [`backend::state`] (statistics and the breaker, which logs its own
//!   transitions), [`backend::breaker`] (pure), [`backend::health`] (active checks),
//!   [`backend::pool`] (a connection pool per backend), [`backend::tls`] (TLS and mTLS to
//!   backends), [`backend::discovery`] (DNS: a task per discovered upstream looks its name up
//!   and sends the addresses to the reloader).
//! - [`routing`]: the tables the request path reads, one set per snapshot: [`routing::route`],
//!   [`routing::split`], upstreams and the pick of a backend in one (panic mode included), rate
//!   limits with their buckets, fault decisions, shadow sampling and admission, retry budgets,
//!   and the keeper that carries lasting state from one snapshot to the next. Built by
//!   `reload`, read by `http`; imports neither.
//! - [`shared`]: what every task reads: the snapshot in force, process-wide counters, the
//!   lifecycle.
//! - [`server`]: [`server::listener`] (socket2, accept, reconcile on reload),
//!   [`server::accept`] (backoff and sparse logs when accept fails), [`server::conn`] (one
//!   connection, HTTP/1.1 or h2c, handed to a handler it does not know), [`server::tls`]
//!   (certificates by SNI, reloaded when their files change), [`server::shutdown`] (stop,
//!   drain), [`server::limits`] (a listener's limits), [`server::sniff`] (raw HTTP/1 heads
//!   watched for framing hyper repairs quietly), [`server::clock`] (lazily re-armed timers).
//! - [`http`]: the request path. `handler` (validates, loads the snapshot once, routes,
//!   rate-limits) -> `attempt` (an `Attempt`: where the split aimed, the deadline, the
//!   backends tried, what it takes to send again; tries, retries, reroutes, fresh-connection
//!   resends) -> `forward` (the response, or an upgraded tunnel) -> `exchange` (finishes the
//!   request's `record` once its response ends). `classify` is the one classification of a
//!   try; `local` is switchyard's own answers; [`http::headers`] rewrites heads;
//!   [`http::validate`] refuses smuggling and malformed heads; `fault` serves injected faults;
//!   `shadow` copies sampled requests in tasks of their own, `compare` (pure) diffs answers.
//! - [`reload`]: [`reload::watcher`] (the config file's [`watch`]; only signals),
//!   [`reload::loader`] (file reads off the workers, with a deadline),
//!   [`reload::reloader`] (the one writer of the snapshot), [`reload::snapshot`] (builds one
//!   from a config).
//! - [`rollout`]: canary and blue-green rollouts: a pure policy, a state machine, a controller
//!   that sends weights to the reloader, and a journal.
//! - [`fleet`]: with `cluster:`, the replicas of a fleet act as one through etcd: one rollout
//!   state, a leader that decides on everyone's numbers, aborts and commands from anywhere.
//! - [`admin`]: the admin HTTP API, the ops listener (probes and metrics only), and the admin
//!   client for the CLI; `/metrics` reads every statistic through its accessors in one module,
//!   from one table of families.
//! - [`app`]: wiring: config -> registry -> snapshot; listeners (with the proxy as their
//!   handler), reloader, watcher, admin; graceful shutdown. [`demo`]: the built-in demo.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub(crate) mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod fleet;
pub mod http;
pub mod reload;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod shard;
pub mod shared;
pub mod stats;
pub mod watch;
