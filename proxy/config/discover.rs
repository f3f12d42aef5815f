//! Config for DNS discovery: an upstream's `discover: { dns, refresh }` (its backends are the
//! addresses a name resolves to) and the top-level `resolver:` that answers those names. The
//! YAML shape, the validated model and the validation live together here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use http::uri::Authority;
use serde::Deserialize;

use super::duration::DurationStr;
use super::errors::Errors;

/// How often a discovered name is looked up again when its records allow longer.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// Nothing is looked up more often than this, whatever the records' TTL (0 included) or the
/// lookup's outcome: the floor under every re-resolution.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

// ----- as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverFile {
    /// `NAME:PORT`: every A and AAAA record of NAME is a backend on PORT.
    pub dns: String,
    pub refresh: Option<DurationStr>,
}

/// `resolver: 10.96.0.10` or `resolver: ["10.0.0.2:53", "10.0.0.3:53"]`.
#[derive(Debug)]
pub enum ResolverFile {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for ResolverFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ResolverFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name server address such as 10.96.0.10:53, or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ResolverFile, E> {
                Ok(ResolverFile::One(s.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ResolverFile, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(ResolverFile::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

// ----- validated -----

/// An upstream whose backends are what `name` resolves to, each on `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    /// As written (`checkout-headless.prod.svc:8080`), for logs and `/status`.
    pub dns: String,
    /// The name looked up, lowercase; a trailing dot makes it absolute (no search domains).
    pub name: String,
    pub port: u16,
    pub refresh: Duration,
}

/// Who answers discovery's lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Resolver {
    /// The system's: the name servers, search domains and options of `/etc/resolv.conf`.
    #[default]
    System,
    /// These name servers (UDP, then TCP for long answers), as one pool; no search domains.
    Servers(Vec<SocketAddr>),
}

/// The file the system resolver is read from.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

pub(super) fn discover(
    path: &str,
    f: Option<&DiscoverFile>,
    errs: &mut Errors,
) -> Option<Discover> {
    let f = f?;
    let path = format!("{path}.discover");
    let before = errs.len();
    let (name, port) = match dns_name(&f.dns) {
        Ok(np) => np,
        Err(why) => {
            errs.push(format!("{path}.dns"), why);
            (String::new(), 0)
        }
    };
    let refresh = match f.refresh {
        Some(d) if d.0 < MIN_REFRESH => {
            errs.push(
                format!("{path}.refresh"),
                format!(
                    "`{:?}` is below the 1s floor: names are never looked up more often than once a second; write e.g. 5s",
                    d.0
                ),
            );
            DEFAULT_REFRESH
        }
        Some(d) => d.0,
        None => DEFAULT_REFRESH,
    };
    (errs.len() == before).then(|| Discover {
        dns: f.dns.clone(),
        name,
        port,
        refresh,
    })
}

/// `NAME:PORT` with a DNS name (not an address), a port, and nothing else.
pub fn dns_name(s: &str) -> Result<(String, u16), String> {
    let fix = "write NAME:PORT, e.g. checkout-headless.prod.svc:8080";
    if s.contains("://") {
        return Err(format!(
            "`{s}` has a scheme; {fix} (for TLS to the backends, add `tls: {{}}` to the upstream)"
        ));
    }
    let authority: Authority = s
        .parse()
        .map_err(|_| format!("`{s}` is not a valid NAME:PORT; {fix}"))?;
    if authority.as_str().contains('@') || s.contains('/') {
        return Err(format!("`{s}` is not a plain NAME:PORT; {fix}"));
    }
    let host = authority.host();
    let port = match authority.port_u16() {
        Some(0) => return Err(format!("`{s}` has port 0; {fix}")),
        Some(p) => p,
        None => {
            return Err(format!(
                "`{s}` has no port: DNS gives the addresses, the port must be written; {fix}"
            ));
        }
    };
    if host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(format!(
            "`{s}` is an address, not a name: list it under `backends` instead"
        ));
    }
    let bare = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a DNS name; {fix}"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

pub(super) fn resolver(f: Option<&ResolverFile>, errs: &mut Errors) -> Resolver {
    let list: Vec<(String, &str)> = match f {
        None => return Resolver::System,
        Some(ResolverFile::One(s)) => vec![("resolver".to_owned(), s.as_str())],
        Some(ResolverFile::Many(v)) => v
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("resolver[{i}]"), s.as_str()))
            .collect(),
    };
    if list.is_empty() {
        errs.push(
            "resolver",
            "an empty list; name at least one server, e.g. `resolver: 10.96.0.10:53`, or remove the key to use /etc/resolv.conf",
        );
    }
    let mut servers = Vec::new();
    for (path, s) in list {
        match name_server(s) {
            Ok(a) => servers.push(a),
            Err(why) => errs.push(path, why),
        }
    }
    Resolver::Servers(servers)
}

/// `IP` or `IP:PORT` (port 53 when left out).
pub fn name_server(s: &str) -> Result<SocketAddr, String> {
    let fix = "write the name server's IP address with an optional port, e.g. 10.96.0.10, 127.0.0.1:5353 or [fd00::10]:53";
    let addr = s
        .parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .or_else(|_| {
            // `[fd00::10]` without a port.
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
                .ok_or(())
        })
        .map_err(|()| format!("`{s}` is not a name server address; {fix}"))?;
    if addr.port() == 0 {
        return Err(format!("`{s}` has port 0; {fix}"));
    }
    Ok(addr)
}

/// With the system resolver, `/etc/resolv.conf` must name a server: checked whenever an
/// upstream discovers, so that `check` and a reload say so instead of every lookup failing.
pub(super) fn system_resolver_usable(errs: &mut Errors) {
    if let Err(why) = system_config() {
        errs.push(
            "resolver",
            format!(
                "not set, and the system resolver cannot be used: {why}; set `resolver: IP[:PORT]` to name the DNS server"
            ),
        );
    }
}

/// The system resolver's settings, from `/etc/resolv.conf`; it must name a server.
pub fn system_config() -> Result<(ResolverConfig, ResolverOpts), String> {
    let (config, opts) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("{RESOLV_CONF} cannot be read: {e}"))?;
    if config.name_servers().is_empty() {
        return Err(format!("{RESOLV_CONF} names no `nameserver`"));
    }
    Ok((config, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_a_port_and_must_be_names() {
        assert_eq!(
            dns_name("Checkout-Headless.prod.svc:8080"),
            Ok(("checkout-headless.prod.svc".to_owned(), 8080))
        );
        assert_eq!(dns_name("a.b.:80"), Ok(("a.b.".to_owned(), 80)));
        for (bad, why) in [
            ("checkout.svc", "has no port"),
            ("checkout.svc:0", "port 0"),
            ("http://checkout.svc:80", "has a scheme"),
            ("10.0.0.1:80", "is an address"),
            ("[::1]:80", "is an address"),
            ("a..b:80", "not a DNS name"),
            ("-a.b:80", "not a DNS name"),
            ("u@a.b:80", "not a plain"),
        ] {
            let e = dns_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn name_servers_default_to_port_53() {
        assert_eq!(name_server("10.0.0.2").unwrap().to_string(), "10.0.0.2:53");
        assert_eq!(
            name_server("127.0.0.1:5353").unwrap().to_string(),
            "127.0.0.1:5353"
        );
        assert_eq!(
            name_server("[fd00::a]").unwrap().to_string(),
            "[fd00::a]:53"
        );
        assert_eq!(name_server("fd00::a").unwrap().to_string(), "[fd00::a]:53");
        for bad in ["dns.local", "10.0.0.2:0", "10.0.0.2:99999", ""] {
            assert!(name_server(bad).is_err(), "{bad}");
        }
    }
}
