//! Integration tests: the real switchyard and real backends on loopback.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod cli;
mod forward;
mod lifecycle;
mod metrics;
mod reload;
mod resilience;
mod shadow;
mod split;
