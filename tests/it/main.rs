//! Integration tests: the real switchyard and real backends on loopback.

#[path = "../support/mod.rs"]
mod support;

mod access_log;
mod admin;
mod admin_auth;
mod cli;
mod config_files;
mod control;
mod discovery;
mod edge_traffic;
mod fleet;
mod forward;
mod grpc;
mod http2;
mod lifecycle;
mod limits;
mod metrics;
mod reload;
mod resilience;
mod rollout;
mod rollout_state;
mod shadow;
mod smuggling;
mod split;
mod tls;
mod tls_reload;
mod tls_upstream;
mod tracing;
mod upstream_conns;
