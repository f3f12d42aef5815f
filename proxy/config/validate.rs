//! From the file as written to the validated model, collecting every error with its YAML path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};

use super::control::{OpsFile, control_limits};
use super::duration::positive;
use super::errors::{ConfigError, Errors, did_you_mean};
use super::file;
use super::model::*;
use super::secret::AdminToken;
use super::{resilience, rollout, shadow, traffic};

pub fn validate(f: file::FileConfig) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();

    let listeners = listeners(&f.listeners, f.broken.contains("listeners"), &mut errs);
    let admin_bind = f
        .admin
        .as_ref()
        .and_then(|a| a.bind.as_deref())
        .unwrap_or(DEFAULT_ADMIN_BIND);
    let admin = admin(f.admin.as_ref(), admin_bind, &mut errs);
    if let Some(admin) = admin.as_ref().filter(|a| a.bind.port() != 0)
        && let Some(i) = listeners.iter().position(|l| l.bind == admin.bind)
    {
        errs.push(
            "admin.bind",
            format!(
                "{} is also the bind address of listeners[{i}]; give the admin API its own port",
                admin.bind
            ),
        );
    }
    let ops = f
        .ops
        .as_ref()
        .and_then(|o| ops(o, &listeners, admin.as_ref(), &mut errs));

    let upstreams: Vec<Arc<Upstream>> = f
        .upstreams
        .iter()
        .filter_map(|(name, u)| upstream(name, u, &mut errs).map(Arc::new))
        .collect();
    let upstream_names: Vec<&str> = f.upstreams.iter().map(|(n, _)| n.as_str()).collect();
    // An upstream whose piece did not parse exists; naming it is not another error.
    let broken_upstreams: Vec<&str> = f
        .broken
        .iter()
        .filter_map(|p| p.strip_prefix("upstreams."))
        .collect();

    let mut route_names = HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in f.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(first) = route_names.insert(r.name.clone(), i) {
            errs.push(
                format!("{path}.name"),
                format!(
                    "route name `{}` is already used by routes[{first}]; route names must be unique",
                    r.name
                ),
            );
        }
        if let Some(route) = route(&path, r, &upstream_names, &broken_upstreams, &mut errs) {
            routes.push(Arc::new(route));
        }
    }
    for (i, r) in f.routes.iter().enumerate() {
        retried_grpc_statuses_are_failures(&format!("routes[{i}]"), r, &upstreams, &mut errs);
        if let Some(rollout) = &r.rollout {
            super::grpc::rollout_counts_alike(
                &format!("routes[{i}]"),
                rollout,
                &upstreams,
                &mut errs,
            );
        }
    }
    if f.routes.is_empty() && !f.broken.contains("routes") {
        errs.push("routes", "no routes: add at least one route with a `split`");
    }

    let cluster = f
        .cluster
        .as_ref()
        .and_then(|c| super::cluster::cluster(c, &mut errs));
    let resolver = super::discover::resolver(f.resolver.as_ref(), &mut errs);
    if resolver == Resolver::System && f.upstreams.iter().any(|(_, u)| u.discover.is_some()) {
        super::discover::system_resolver_usable(&mut errs);
    }

    let tracing = super::tracing::tracing(f.tracing.as_ref(), &mut errs);

    let drain_timeout = f
        .drain_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT);

    match (errs.is_empty(), admin) {
        (true, Some(admin)) => Ok(Config {
            listeners,
            admin,
            ops,
            state_dir: f.state_dir.map(PathBuf::from),
            drain_timeout,
            upstreams,
            routes,
            cluster,
            resolver,
            tracing,
        }),
        _ => Err(errs.into_vec()),
    }
}

/// A gRPC status in `retries.on` is retried only when the answering upstream counts it as a
/// failure (a success is never retried): one that some upstream of the route does not count
/// would silently never be retried there.
fn retried_grpc_statuses_are_failures(
    path: &str,
    r: &file::Route,
    upstreams: &[Arc<Upstream>],
    errs: &mut Errors,
) {
    let Some(on) = r.retries.as_ref().and_then(|p| p.on.as_ref()) else {
        return;
    };
    for (j, item) in on.iter().enumerate() {
        let resilience::RetryOnFile::Name(name) = item else {
            continue;
        };
        let Some(code) = super::grpc::code(name).filter(|c| *c != 0) else {
            continue;
        };
        let not_counted: Vec<&str> = r
            .split
            .iter()
            .filter_map(|s| upstreams.iter().find(|u| *u.name == *s.upstream))
            .filter(|u| !u.grpc_failures.contains(code))
            .map(|u| &*u.name)
            .collect();
        if !not_counted.is_empty() {
            errs.push(
                format!("{path}.retries.on[{j}]"),
                format!(
                    "`{name}` is retried only where the upstream counts it as the backend's failure, and {} does not (list {} in its `grpc_failures` if it should)",
                    super::errors::quoted_list(&not_counted),
                    super::grpc::NAMES[usize::from(code)]
                ),
            );
        }
    }
}

/// The admin section; a `token_file` is read here, so a missing or empty one is a config error
/// (at start, `check` and every reload) rather than an admin API that silently stays open.
fn admin(f: Option<&file::Admin>, bind: &str, errs: &mut Errors) -> Option<Admin> {
    let bind = socket_addr(bind, "admin.bind", errs);
    let token = f.and_then(|a| a.token_file.as_deref()).and_then(|p| {
        match AdminToken::read(std::path::Path::new(p)) {
            Ok(t) => Some(t),
            Err(why) => {
                errs.push("admin.token_file", why);
                None
            }
        }
    });
    let protect_reads = f.and_then(|a| a.protect_reads).unwrap_or(false);
    if protect_reads && f.is_none_or(|a| a.token_file.is_none()) {
        errs.push(
            "admin.protect_reads",
            "needs `admin.token_file`: without a token there is nothing to ask readers for",
        );
    }
    let limits = control_limits(
        "admin",
        f.and_then(|a| a.max_connections),
        f.and_then(|a| a.header_read_timeout),
        errs,
    );
    Some(Admin {
        bind: bind?,
        token,
        protect_reads,
        limits,
    })
}

/// The ops listener: its own address (not a listener's, not the admin API's).
fn ops(
    f: &OpsFile,
    listeners: &[Listener],
    admin: Option<&Admin>,
    errs: &mut Errors,
) -> Option<Ops> {
    let limits = control_limits("ops", f.max_connections, f.header_read_timeout, errs);
    let bind = socket_addr(&f.bind, "ops.bind", errs)?;
    if bind.port() != 0 {
        let taken = if admin.is_some_and(|a| a.bind == bind) {
            Some("admin.bind".to_owned())
        } else {
            listeners
                .iter()
                .position(|l| l.bind == bind)
                .map(|i| format!("listeners[{i}].bind"))
        };
        if let Some(other) = taken {
            errs.push(
                "ops.bind",
                format!("{bind} is also {other}; give the ops listener its own port"),
            );
        }
    }
    Some(Ops { bind, limits })
}

/// The admin and ops listeners' names in `listener` labels.
const RESERVED_LISTENER_NAMES: &[&str] = &["admin", "ops"];

fn listeners(list: &[file::Listener], broken: bool, errs: &mut Errors) -> Vec<Listener> {
    if list.is_empty() && !broken {
        errs.push(
            "listeners",
            "no listeners: add one, e.g. `listeners: [{ name: public, bind: 0.0.0.0:8080 }]`",
        );
    }
    let mut seen_names = HashSet::new();
    let mut seen_binds = HashMap::new();
    let mut out = Vec::new();
    for (i, l) in list.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let name = l.name.clone().unwrap_or_else(|| format!("listener-{i}"));
        if RESERVED_LISTENER_NAMES.contains(&name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!(
                    "`{name}` names the {name} listener in metrics and logs; choose another name"
                ),
            );
        }
        if !seen_names.insert(name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("listener name `{name}` is used twice"),
            );
        }
        let limits = super::limits::limits(&path, l.limits.as_ref(), errs);
        let access_log = super::access_log::access_log(&path, l.access_log.as_ref(), errs);
        let Some(bind) = socket_addr(&l.bind, &format!("{path}.bind"), errs) else {
            continue;
        };
        if bind.port() != 0
            && let Some(first) = seen_binds.insert(bind, i)
        {
            errs.push(
                format!("{path}.bind"),
                format!("{bind} is already the bind address of listeners[{first}]"),
            );
        }
        let tls = l
            .tls
            .as_ref()
            .and_then(|t| super::tls::listener_tls(&format!("{path}.tls"), t, errs));
        out.push(Listener {
            name,
            bind,
            tls,
            limits,
            access_log,
        });
    }
    out
}

fn socket_addr(s: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_)
            if s.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u64>().ok())
                .is_some_and(|p| p > 65535) =>
        {
            let port = s.rsplit_once(':').map_or("", |(_, p)| p);
            errs.push(
                path,
                format!("port {port} is out of range; ports are 1 to 65535, e.g. 0.0.0.0:8080"),
            );
            None
        }
        Err(_) => {
            errs.push(
                path,
                format!(
                    "`{s}` is not an IP:port address; write e.g. 0.0.0.0:8080, 127.0.0.1:9901 or [::]:8080"
                ),
            );
            None
        }
    }
}

fn upstream(name: &str, u: &file::Upstream, errs: &mut Errors) -> Option<Upstream> {
    let path = format!("upstreams.{name}");
    let before = errs.len();
    if name.is_empty() {
        errs.push(&path, "upstream names must not be empty");
    }
    let discover = super::discover::discover(&path, u.discover.as_ref(), errs);
    match (u.backends.is_empty(), u.discover.is_some()) {
        (true, false) => errs.push(
            format!("{path}.backends"),
            "no backends: list at least one as host:port, e.g. [\"10.0.0.11:8080\"], or find them in DNS with `discover: { dns: NAME:PORT }`",
        ),
        (false, true) => errs.push(
            format!("{path}.discover"),
            "`backends` and `discover` are both set; an upstream either lists its backends or discovers them: keep one",
        ),
        _ => {}
    }
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    let https = u
        .backends
        .iter()
        .filter(|b| b.starts_with("https://"))
        .count();
    if https > 0 && https < u.backends.len() {
        errs.push(
            format!("{path}.backends"),
            "some backends are https:// and some are not; an upstream is all TLS or all plain",
        );
    }
    for (i, b) in u.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let b = super::upstream_tls::without_https(b);
        match backend_addr(&b) {
            Ok(addr) => {
                if !seen.insert(addr.clone()) {
                    errs.push(bpath, format!("backend `{b}` is listed twice"));
                } else {
                    backends.push(addr);
                }
            }
            Err(why) => errs.push(bpath, why),
        }
    }
    let transport = Transport {
        connect_timeout: positive(
            u.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            &path,
            "connect_timeout",
            errs,
        ),
        idle_timeout: positive(
            u.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            &path,
            "idle_timeout",
            errs,
        ),
        tls: (https > 0 || u.tls.is_some())
            .then(|| super::upstream_tls::upstream_tls(&path, u.tls.as_ref(), errs))
            .flatten()
            .map(|mut tls| {
                // Discovered backends are addresses: their certificates carry the name.
                if let Some(d) = &discover {
                    let name = d.name.trim_end_matches('.');
                    tls.server_name.get_or_insert_with(|| name.to_owned());
                }
                tls
            }),
        protocol: u
            .protocol
            .as_deref()
            .and_then(Protocol::parse)
            .unwrap_or_default(),
    };
    if let Some(p) = &u.protocol
        && Protocol::parse(p).is_none()
    {
        errs.push(
            format!("{path}.protocol"),
            format!(
                "`{p}` is not a protocol; use one of {}",
                Protocol::NAMES.join(", ")
            ),
        );
    }
    let breaker = resilience::breaker(&path, u.circuit_breaker.as_ref(), errs);
    let health_check = resilience::health_check(&path, u.health_check.as_ref(), errs);
    // gRPC needs HTTP/2, which plain `auto` never speaks.
    let http1_only = transport.speaks_http2() == Some(false);
    if health_check
        .as_ref()
        .is_some_and(|h| h.grpc_service.is_some())
        && http1_only
    {
        errs.push(
            format!("{path}.health_check.grpc"),
            "the gRPC health protocol runs over HTTP/2: set `protocol: http2` on this upstream",
        );
    }
    let grpc_failures = super::grpc::failures(&path, u.grpc_failures.as_deref(), errs);
    if u.grpc_failures.is_some() && http1_only {
        errs.push(
            format!("{path}.grpc_failures"),
            "gRPC runs over HTTP/2: set `protocol: http2` on this upstream",
        );
    }
    let panic_threshold = resilience::panic_threshold(&path, u.panic_threshold, errs);
    (errs.len() == before).then(|| Upstream {
        name: name.into(),
        backends,
        discover,
        transport,
        breaker,
        health_check,
        panic_threshold,
        grpc_failures,
    })
}

/// `host:port`, with a port, and nothing else (no scheme, no path).
pub fn backend_addr(s: &str) -> Result<BackendAddr, String> {
    let fix = "write it as host:port, e.g. 10.0.0.11:8080 or checkout.svc:8080";
    if s.contains("://") {
        return Err(format!(
            "`{s}` has a scheme; {fix} (or https://host:port for a TLS backend)"
        ));
    }
    let authority: Authority = s
        .parse()
        .map_err(|_| format!("`{s}` is not a valid host:port; {fix}"))?;
    if authority.as_str().contains('@') || s.contains('/') {
        return Err(format!("`{s}` is not a plain host:port; {fix}"));
    }
    match authority.port_u16() {
        Some(0) => Err(format!("`{s}` has port 0; {fix}")),
        Some(_) if !authority.host().is_empty() => Ok(BackendAddr { authority }),
        _ => Err(format!("`{s}` has no port; {fix}")),
    }
}

fn route(
    path: &str,
    r: &file::Route,
    upstreams: &[&str],
    broken_upstreams: &[&str],
    errs: &mut Errors,
) -> Option<Route> {
    let before = errs.len();
    if r.name.is_empty() {
        errs.push(format!("{path}.name"), "route names must not be empty");
    }
    let matcher = route_match(path, &r.matcher, errs);

    if r.split.is_empty() {
        errs.push(
            format!("{path}.split"),
            "empty split: list at least one `{ upstream: NAME, weight: N }`",
        );
    }
    let mut split = Vec::new();
    let mut seen = HashSet::new();
    for (i, s) in r.split.iter().enumerate() {
        let spath = format!("{path}.split[{i}].upstream");
        if broken_upstreams.contains(&s.upstream.as_str()) {
            // Reported where it is broken; nothing to add here.
        } else if !upstreams.contains(&s.upstream.as_str()) {
            errs.push(spath, unknown_upstream(&s.upstream, upstreams));
        } else if !seen.insert(s.upstream.as_str()) {
            errs.push(
                spath,
                format!("upstream `{}` appears twice in this split", s.upstream),
            );
        }
        split.push(SplitTarget {
            upstream: s.upstream.as_str().into(),
            weight: s.weight,
        });
    }
    if !r.split.is_empty() && r.split.iter().all(|s| s.weight == 0) {
        errs.push(
            format!("{path}.split"),
            "every weight is 0, so no request could be sent anywhere; give at least one upstream a positive weight",
        );
    }
    if r.split.iter().map(|s| u64::from(s.weight)).sum::<u64>() > 1_000_000 {
        errs.push(
            format!("{path}.split"),
            "weights add up to more than 1,000,000; weights are relative, so scale them down",
        );
    }

    let sticky = r
        .sticky
        .as_ref()
        .and_then(|s| match (&s.header, &s.cookie) {
            (Some(h), None) => {
                header_name(h, &format!("{path}.sticky.header"), errs).map(StickyKey::Header)
            }
            (None, Some(c)) if !c.is_empty() => Some(StickyKey::Cookie(c.clone())),
            (Some(_), Some(_)) => {
                errs.push(
                    format!("{path}.sticky"),
                    "both `header` and `cookie` are set; keep one, e.g. `sticky: { header: x-user-id }`",
                );
                None
            }
            _ => {
                errs.push(
                    format!("{path}.sticky"),
                    "set one of `header` or `cookie`, e.g. `sticky: { header: x-user-id }` or `sticky: { cookie: session }`",
                );
                None
            }
        });
    let override_header = r
        .override_header
        .as_ref()
        .and_then(|h| header_name(h, &format!("{path}.override_header"), errs));
    let timeout = positive(r.timeout, DEFAULT_ROUTE_TIMEOUT, path, "timeout", errs);
    let retries = resilience::retries(path, r.retries.as_ref(), errs);
    let rate_limit = traffic::rate_limit(path, r.rate_limit.as_ref(), errs);
    let names: Vec<&str> = r.split.iter().map(|s| s.upstream.as_str()).collect();
    let fault = traffic::fault(path, r.fault.as_ref(), &names, errs);
    let rollout = rollout::rollout(path, r.rollout.as_ref(), &names, errs).map(Arc::new);
    let known = |name: &str| {
        if broken_upstreams.contains(&name) || upstreams.contains(&name) {
            Ok(())
        } else {
            Err(unknown_upstream(name, upstreams))
        }
    };
    let shadow = shadow::shadow(path, r.shadow.as_ref(), &known, r.sticky.is_some(), errs);
    shadow_gate(path, rollout.as_deref(), shadow.as_ref(), errs);

    (errs.len() == before).then(|| Route {
        name: r.name.as_str().into(),
        matcher,
        timeout,
        split,
        sticky,
        override_header,
        retries,
        rate_limit,
        fault,
        rollout,
        shadow,
    })
}

/// The shadow-mismatch gate reads the route's shadow comparisons: they must be the canary's.
fn shadow_gate(
    path: &str,
    rollout: Option<&RolloutSpec>,
    shadow: Option<&Shadow>,
    errs: &mut Errors,
) {
    let Some(r) = rollout.filter(|r| r.gates.max_shadow_mismatch_rate.is_some()) else {
        return;
    };
    let why = match shadow {
        None => {
            "needs the route to shadow to the canary: add `shadow: { upstream: ".to_owned()
                + &r.canary
                + ", percent: ..., compare: true }`, or remove this gate"
        }
        Some(s) if *s.upstream != *r.canary => format!(
            "compares the canary's answers, but this route shadows to `{}`, not to the canary `{}`",
            s.upstream, r.canary
        ),
        Some(s) if !s.compare => {
            "needs `compare: true` under the route's `shadow:` (without it nothing is compared)"
                .to_owned()
        }
        Some(s) if s.basis_points == 0 => {
            "needs the route's `shadow.percent` above 0 (at 0 nothing is compared, and the gate \
             would never judge)"
                .to_owned()
        }
        Some(_) => return,
    };
    errs.push(
        format!("{path}.rollout.gates.max_shadow_mismatch_rate"),
        why,
    );
}

fn unknown_upstream(name: &str, upstreams: &[&str]) -> String {
    let known = if upstreams.is_empty() {
        "no upstreams are defined; add one under `upstreams:`".to_owned()
    } else {
        format!("defined upstreams: {}", upstreams.join(", "))
    };
    format!(
        "unknown upstream `{name}`{}; {known}",
        did_you_mean(name, upstreams)
    )
}

fn route_match(path: &str, m: &file::Match, errs: &mut Errors) -> RouteMatch {
    let host = match m.host.as_deref() {
        None | Some("*") => HostMatch::Any,
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            if let Some(suffix) = lower.strip_prefix("*.") {
                check_host(suffix, h, path, errs);
                HostMatch::Suffix(format!(".{suffix}"))
            } else {
                check_host(&lower, h, path, errs);
                HostMatch::Exact(lower)
            }
        }
    };
    let path_prefix = m.path_prefix.clone().unwrap_or_else(|| "/".to_owned());
    if !path_prefix.starts_with('/') {
        errs.push(
            format!("{path}.match.path_prefix"),
            format!("`{path_prefix}` must start with `/`; write `/{path_prefix}`"),
        );
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        let hpath = format!("{path}.match.headers.{name}");
        let Some(name) = header_name(name, &hpath, errs) else {
            continue;
        };
        match HeaderValue::from_str(value) {
            Ok(v) => headers.push((name, v)),
            Err(_) => errs.push(hpath, format!("`{value}` is not a valid header value")),
        }
    }
    RouteMatch {
        host,
        path_prefix,
        headers,
    }
}

fn check_host(host: &str, written: &str, path: &str, errs: &mut Errors) {
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with('.');
    if !ok {
        errs.push(
            format!("{path}.match.host"),
            format!(
                "`{written}` is not a host name; write e.g. shop.example.com or *.example.com (no port, no scheme)"
            ),
        );
    }
}

fn header_name(name: &str, path: &str, errs: &mut Errors) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(path, format!("`{name}` is not a valid HTTP header name"));
            None
        }
    }
}
