//! Config: YAML text -> [`file`](mod@file) (serde, as written) -> [`validate`] -> [`model`] (immutable).
//!
//! Loading never stops at the first problem: the result is either a whole valid [`Config`] or
//! every error found, each with the YAML path where it was found and how to fix it.
//!
//! Imports run one way: [`errors`], [`duration`] and [`read`] at the bottom; the feature
//! modules ([`limits`], [`control`], [`cluster`], [`discover`], [`grpc`], [`resilience`], [`rollout`], [`shadow`],
//! [`tls`], [`traffic`], [`upstream_tls`], [`secret`]) each hold a feature's YAML shape, model
//! and checks; [`file`](mod@file) and [`model`] gather them; [`validate`] turns one into the other; [`load`] runs the whole.
//! This file only names and re-exports.

pub mod access_log;
pub mod cluster;
pub mod control;
pub mod discover;
pub mod duration;
pub mod errors;
pub mod file;
pub mod grpc;
pub mod limits;
pub mod load;
pub mod model;
pub mod read;
mod repair;
pub mod resilience;
pub mod rollout;
pub mod secret;
pub mod shadow;
pub mod tls;
pub mod tracing;
pub mod traffic;
pub mod upstream_tls;
pub mod validate;

pub use errors::{ConfigError, ConfigErrors};
pub use load::{load_file, parse_str, read_text};
pub use model::Config;
