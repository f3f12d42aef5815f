//! One lookup: the A and AAAA records of a name, asked together, and what they come to.
//!
//! A lookup is good only when both questions were answered: a timeout or an error on either
//! side fails it (and the last good set stays), so a flaky server can never drop half of a
//! dual-stack upstream's pods. "No such name" and "no records of this type" are answers.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;

use crate::config::discover::system_config;
use crate::config::model::Resolver;

/// Per question to a configured server; every server is tried `ATTEMPTS` times.
const TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: usize = 2;

/// What one lookup came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// At least one address; `ttl` is the shortest of the records'.
    Addrs { ips: Vec<IpAddr>, ttl: Duration },
    /// The name has no A or AAAA records (or does not exist).
    Empty,
    /// No answer, or an error answer (SERVFAIL, REFUSED, ...).
    Failed(String),
}

/// One of the two questions (A, AAAA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// Addresses with their TTLs (seconds).
    Records(Vec<(IpAddr, u32)>),
    None,
    Failed(String),
}

/// The two answers as one outcome: any failure fails it; addresses sorted, duplicates gone.
pub fn combine(a: Side, aaaa: Side) -> Outcome {
    let mut records = Vec::new();
    for side in [a, aaaa] {
        match side {
            Side::Records(r) => records.extend(r),
            Side::None => {}
            Side::Failed(why) => return Outcome::Failed(why),
        }
    }
    let Some(ttl) = records.iter().map(|(_, ttl)| *ttl).min() else {
        return Outcome::Empty;
    };
    let mut ips: Vec<IpAddr> = records.into_iter().map(|(ip, _)| ip).collect();
    ips.sort();
    ips.dedup();
    Outcome::Addrs {
        ips,
        ttl: Duration::from_secs(u64::from(ttl)),
    }
}

fn side(answer: Result<Lookup, NetError>) -> Side {
    match answer {
        Ok(lookup) => {
            let records: Vec<(IpAddr, u32)> = lookup
                .answers()
                .iter()
                .filter_map(|r| r.data.ip_addr().map(|ip| (ip, r.ttl)))
                .collect();
            if records.is_empty() {
                Side::None
            } else {
                Side::Records(records)
            }
        }
        Err(e) if e.is_no_records_found() => Side::None,
        Err(e) => Side::Failed(e.to_string()),
    }
}

/// Asks one resolver's servers.
pub struct Lookups {
    resolver: TokioResolver,
}

impl Lookups {
    pub fn new(spec: &Resolver) -> Result<Lookups, String> {
        let (config, mut opts) = match spec {
            Resolver::System => system_config()?,
            Resolver::Servers(servers) => {
                let servers = servers
                    .iter()
                    .map(|addr| {
                        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                        for c in &mut ns.connections {
                            c.port = addr.port();
                        }
                        ns
                    })
                    .collect();
                let mut opts = ResolverOpts::default();
                opts.timeout = TIMEOUT;
                opts.attempts = ATTEMPTS;
                (ResolverConfig::from_name_servers(servers), opts)
            }
        };
        // DNS only, like NGINX's and HAProxy's resolvers: /etc/hosts does not describe pods.
        opts.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot set up the resolver: {e}"))?;
        Ok(Lookups { resolver })
    }

    /// Asks for the A and AAAA records of `name` (both at once), past any cache: discovery
    /// decides itself when to ask again.
    pub async fn lookup(&self, name: &str) -> Outcome {
        self.resolver.clear_cache();
        let (a, aaaa) = tokio::join!(
            self.resolver.lookup(name, RecordType::A),
            self.resolver.lookup(name, RecordType::AAAA)
        );
        combine(side(a), side(aaaa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_sides_make_one_sorted_set_with_the_shortest_ttl() {
        let a = Side::Records(vec![(ip("10.0.0.3"), 30), (ip("10.0.0.1"), 10)]);
        let aaaa = Side::Records(vec![(ip("fd00::1"), 20), (ip("fd00::1"), 20)]);
        assert_eq!(
            combine(a, aaaa),
            Outcome::Addrs {
                ips: vec![ip("10.0.0.1"), ip("10.0.0.3"), ip("fd00::1")],
                ttl: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn one_family_is_enough_but_a_failure_on_either_side_fails() {
        let a = || Side::Records(vec![(ip("10.0.0.1"), 5)]);
        assert!(matches!(combine(a(), Side::None), Outcome::Addrs { .. }));
        assert!(matches!(combine(Side::None, a()), Outcome::Addrs { .. }));
        assert_eq!(combine(Side::None, Side::None), Outcome::Empty);
        assert_eq!(
            combine(a(), Side::Failed("timeout".into())),
            Outcome::Failed("timeout".into())
        );
        assert_eq!(
            combine(Side::Failed("refused".into()), Side::None),
            Outcome::Failed("refused".into())
        );
    }
}
