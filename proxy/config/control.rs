//! What the admin and ops listeners may cost: a header read timeout and a connection cap, like
//! a public listener's `limits:` (see [`super::limits`]), with the same defaults for the timeout
//! and a cap fit for operators and scrapers rather than clients; and the `ops:` listener
//! (`/livez`, `/readyz`, `/metrics` only), off unless configured.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::duration::{DurationStr, positive};
use super::errors::Errors;
use super::limits::DEFAULT_HEADER_READ_TIMEOUT;

/// Connections the admin or ops listener holds open at once; more are accepted and closed.
pub const DEFAULT_CONTROL_MAX_CONNECTIONS: usize = 64;
const MAX_CONTROL_CONNECTIONS: usize = 10_000;

// ----- as written -----

/// `ops:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsFile {
    pub bind: String,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<DurationStr>,
}

// ----- validated -----

/// The admin or ops listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Open connections at most; more are accepted and closed at once.
    pub max_connections: usize,
    /// Time a client has to send a whole request head, the first on a connection or the next
    /// on a kept-alive one; then the connection is closed.
    pub header_read_timeout: Duration,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            max_connections: DEFAULT_CONTROL_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// The ops listener: probes and metrics, for kubelets and Prometheus, beside an admin API that
/// stays on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ops {
    pub bind: SocketAddr,
    pub limits: ControlLimits,
}

// ----- validation -----

/// `max_connections` and `header_read_timeout` of `admin` or `ops` (at `path`).
pub(super) fn control_limits(
    path: &str,
    max_connections: Option<usize>,
    header_read_timeout: Option<DurationStr>,
    errs: &mut Errors,
) -> ControlLimits {
    let max_connections = match max_connections {
        Some(n) if n == 0 || n > MAX_CONTROL_CONNECTIONS => {
            errs.push(
                format!("{path}.max_connections"),
                format!("must be 1 to {MAX_CONTROL_CONNECTIONS}; the default is {DEFAULT_CONTROL_MAX_CONNECTIONS}"),
            );
            DEFAULT_CONTROL_MAX_CONNECTIONS
        }
        Some(n) => n,
        None => DEFAULT_CONTROL_MAX_CONNECTIONS,
    };
    ControlLimits {
        max_connections,
        header_read_timeout: positive(
            header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            path,
            "header_read_timeout",
            errs,
        ),
    }
}
