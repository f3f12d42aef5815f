//! The validated config: every name resolved, every default filled in, immutable once built.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};

pub use super::control::{ControlLimits, Ops};
pub use super::discover::{Discover, Resolver};
pub use super::grpc::GrpcCodes;
pub use super::resilience::{BreakerConfig, HealthCheck, RetryOn, RetryPolicy};
pub use super::rollout::RolloutSpec;
pub use super::secret::AdminToken;
pub use super::shadow::{Sample, Shadow};
pub use super::tls::ListenerTls;
pub use super::tracing::{Otlp, Tracing};
pub use super::traffic::{Fault, FaultAbort, FaultDelay, RateKey, RateLimit};
pub use super::upstream_tls::UpstreamTls;

pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Envoy's default route timeout: time allowed until the response headers arrive.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    /// The ops listener (probes and metrics only), when configured.
    pub ops: Option<Ops>,
    pub state_dir: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: Vec<Arc<Route>>,
    /// The fleet this replica belongs to (`cluster:`); `None`: on its own.
    pub cluster: Option<super::cluster::Cluster>,
    /// Who answers DNS discovery's lookups.
    pub resolver: Resolver,
    /// Trace context and span export.
    pub tracing: Tracing,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    /// Serve TLS (HTTPS, HTTP/2 by ALPN) instead of plain HTTP.
    pub tls: Option<ListenerTls>,
    pub limits: super::limits::Limits,
    /// One JSON line per request (`access_log:`), when configured.
    pub access_log: Option<super::access_log::AccessLog>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: SocketAddr,
    /// When set, mutating admin calls need `Authorization: Bearer <token>`.
    pub token: Option<AdminToken>,
    /// With a token, reads (`/status`, `/metrics`, ...) need it too; probes stay open.
    pub protect_reads: bool,
    pub limits: ControlLimits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: Arc<str>,
    /// As configured; empty when the backends are discovered (`discover`).
    pub backends: Vec<BackendAddr>,
    /// Backends are the addresses a DNS name resolves to, kept up to date by
    /// [`crate::backend::discovery`].
    pub discover: Option<Discover>,
    pub transport: Transport,
    pub breaker: BreakerConfig,
    pub health_check: Option<HealthCheck>,
    /// When more than this percent of the backends are out, use them all anyway.
    pub panic_threshold: u8,
    /// The gRPC statuses that count against a backend like a 5xx: the default five and the
    /// upstream's `grpc_failures`.
    pub grpc_failures: GrpcCodes,
}

/// What shapes an upstream's connections; when it changes, its connection pools are rebuilt
/// (while breakers and statistics carry over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connect to the backends over TLS.
    pub tls: Option<UpstreamTls>,
    pub protocol: Protocol,
}

impl Transport {
    /// Whether the backends are spoken HTTP/2 (`Some(true)`) or HTTP/1.1 (`Some(false)`);
    /// `None` for `auto` over TLS, where ALPN decides per connection (plain `auto` is
    /// HTTP/1.1).
    pub(crate) fn speaks_http2(&self) -> Option<bool> {
        match self.protocol {
            Protocol::Http2 => Some(true),
            Protocol::Auto if self.tls.is_some() => None,
            Protocol::Http1 | Protocol::Auto => Some(false),
        }
    }
}

/// The HTTP version spoken to an upstream's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per connection.
    #[default]
    Http1,
    /// HTTP/2, many requests per connection: prior knowledge (h2c) over plain TCP, ALPN `h2`
    /// over TLS.
    Http2,
    /// Over TLS, whichever of `h2` and `http/1.1` the backend picks by ALPN; over plain TCP,
    /// HTTP/1.1 (without TLS there is nothing to negotiate with, as Envoy's `AUTO`).
    Auto,
}

impl Protocol {
    pub const NAMES: [&'static str; 3] = ["http1", "http2", "auto"];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "http1" => Some(Protocol::Http1),
            "http2" => Some(Protocol::Http2),
            "auto" => Some(Protocol::Auto),
            _ => None,
        }
    }
}

/// A backend as written in the config (`host:port`); names are resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub authority: Authority,
}

impl BackendAddr {
    pub fn as_str(&self) -> &str {
        self.authority.as_str()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub timeout: Duration,
    pub split: Vec<SplitTarget>,
    pub sticky: Option<StickyKey>,
    pub override_header: Option<HeaderName>,
    pub retries: Option<RetryPolicy>,
    pub rate_limit: Option<RateLimit>,
    pub fault: Option<Fault>,
    pub rollout: Option<Arc<RolloutSpec>>,
    /// Mirroring to another upstream (`shadow:`).
    pub shadow: Option<Shadow>,
}

impl Route {
    pub fn weights(&self) -> Vec<u32> {
        self.split.iter().map(|s| s.weight).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub host: HostMatch,
    pub path_prefix: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lowercase, without a port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any host ending with it.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    pub upstream: Arc<str>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(String),
}
