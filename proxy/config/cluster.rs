//! `cluster:`: the fleet of replicas this switchyard belongs to, through etcd (see
//! [`crate::fleet`]). The YAML as written, the validated model, and its validation (every error
//! with its YAML path). The password and the TLS files are read here, at every load, so a
//! missing one is a config error (`switchyard check` reports it) rather than a surprise later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

use super::duration::DurationStr;
use super::errors::Errors;
use super::upstream_tls::{UpstreamTls, UpstreamTlsFile, upstream_tls};

pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// etcd grants no lease much shorter (its minimum is 1.5 election timeouts, 1.5 s by default).
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
const MAX_LEASE_TTL: Duration = Duration::from_secs(300);
const MIN_PUBLISH_INTERVAL: Duration = Duration::from_millis(50);

// ----- as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub name: String,
    pub node: Option<String>,
    pub etcd: EtcdFile,
    pub lease_ttl: Option<DurationStr>,
    pub publish_interval: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFile {
    pub endpoints: Vec<String>,
    pub tls: Option<UpstreamTlsFile>,
    pub username: Option<String>,
    pub password_file: Option<String>,
}

// ----- validated -----

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The fleet: every key lives under `/switchyard/<name>/`.
    pub name: String,
    /// This replica's id (default: `$HOSTNAME`, the pod's name in Kubernetes).
    pub node: String,
    pub etcd: Etcd,
    /// Leadership and node liveness.
    pub lease_ttl: Duration,
    /// How often a replica publishes its rollout counters.
    pub publish_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Etcd {
    pub endpoints: Vec<Endpoint>,
    /// Client TLS (`https://` endpoints): roots, optional client certificate.
    pub tls: Option<UpstreamTls>,
    pub auth: Option<EtcdAuth>,
}

/// One etcd endpoint: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub authority: Authority,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

/// etcd's username and password (read from `password_file`); `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub username: String,
    pub password_file: PathBuf,
    password: String,
}

impl EtcdAuth {
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EtcdAuth({}, password from {})",
            self.username,
            self.password_file.display()
        )
    }
}

/// Names that go into etcd keys and logs: no `/`, no spaces.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The node id when `node` is not set: `$HOSTNAME`, else the kernel's host name.
fn default_node() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
}

pub(super) fn cluster(f: &ClusterFile, errs: &mut Errors) -> Option<Cluster> {
    let before = errs.len();
    if !valid_name(&f.name) {
        errs.push(
            "cluster.name",
            format!(
                "`{}` is not a fleet name: use 1 to 128 letters, digits, `-`, `_` or `.`, e.g. checkout-ingress",
                f.name
            ),
        );
    }
    let node = match f.node.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => Some(n.to_owned()),
        None => default_node(),
    };
    match &node {
        Some(n) if valid_name(n) => {}
        Some(n) => errs.push(
            "cluster.node",
            format!(
                "`{n}` is not a node id: use 1 to 128 letters, digits, `-`, `_` or `.` (the default is $HOSTNAME)"
            ),
        ),
        None => errs.push(
            "cluster.node",
            "no node id: set `cluster.node` (the default, $HOSTNAME, is not set)",
        ),
    }
    let lease_ttl = f.lease_ttl.map_or(DEFAULT_LEASE_TTL, |d| d.0);
    if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
        errs.push(
            "cluster.lease_ttl",
            format!(
                "must be between {}s and {}s: it is how long a replica that stops answering keeps leading",
                MIN_LEASE_TTL.as_secs(),
                MAX_LEASE_TTL.as_secs()
            ),
        );
    }
    let publish_interval = f.publish_interval.map_or(DEFAULT_PUBLISH_INTERVAL, |d| d.0);
    if publish_interval < MIN_PUBLISH_INTERVAL || publish_interval > lease_ttl / 2 {
        errs.push(
            "cluster.publish_interval",
            format!(
                "must be between {}ms and half of lease_ttl ({}ms)",
                MIN_PUBLISH_INTERVAL.as_millis(),
                (lease_ttl / 2).as_millis()
            ),
        );
    }
    let etcd = etcd(&f.etcd, errs);
    if errs.len() != before {
        return None;
    }
    Some(Cluster {
        name: f.name.clone(),
        node: node?,
        etcd: etcd?,
        lease_ttl,
        publish_interval,
    })
}

fn etcd(f: &EtcdFile, errs: &mut Errors) -> Option<Etcd> {
    let before = errs.len();
    if f.endpoints.is_empty() {
        errs.push(
            "cluster.etcd.endpoints",
            "no endpoints: list etcd's client URLs, e.g. [\"http://127.0.0.1:2379\"]",
        );
    }
    let endpoints: Vec<Endpoint> = f
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| endpoint(e, &format!("cluster.etcd.endpoints[{i}]"), errs))
        .collect();
    let tls_endpoints = endpoints.iter().filter(|e| e.tls).count();
    if tls_endpoints != 0 && tls_endpoints != endpoints.len() {
        errs.push(
            "cluster.etcd.endpoints",
            "mixes http:// and https://: etcd's client URLs share one scheme",
        );
    }
    let tls = match (&f.tls, tls_endpoints > 0) {
        (Some(_), false) if !endpoints.is_empty() => {
            errs.push(
                "cluster.etcd.tls",
                "is set but the endpoints are http://; write them https://",
            );
            None
        }
        (t, true) => upstream_tls("cluster.etcd", t.as_ref(), errs),
        _ => None,
    };
    let auth = match (&f.username, &f.password_file) {
        (Some(user), Some(file)) => password(user, Path::new(file), errs),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                "cluster.etcd.password_file",
                "`username` is set but `password_file` is missing",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                "cluster.etcd.username",
                "`password_file` is set but `username` is missing",
            );
            None
        }
    };
    (errs.len() == before).then_some(Etcd {
        endpoints,
        tls,
        auth,
    })
}

fn endpoint(s: &str, path: &str, errs: &mut Errors) -> Option<Endpoint> {
    let (tls, rest) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            errs.push(
                path,
                format!("`{s}` must start with http:// or https://, e.g. http://127.0.0.1:2379"),
            );
            return None;
        }
    };
    let rest = rest.trim_end_matches('/');
    let with_port = match rest.parse::<Authority>() {
        Ok(a) if a.port().is_none() => format!("{rest}:2379"),
        _ => rest.to_owned(),
    };
    match with_port.parse::<Authority>() {
        Ok(authority) if !rest.contains(['/', '@', '?']) && !authority.host().is_empty() => {
            Some(Endpoint { tls, authority })
        }
        _ => {
            errs.push(
                path,
                format!("`{s}` is not an etcd client URL: write scheme://host:port, e.g. http://127.0.0.1:2379"),
            );
            None
        }
    }
}

fn password(username: &str, file: &Path, errs: &mut Errors) -> Option<EtcdAuth> {
    let path = "cluster.etcd.password_file";
    match std::fs::read_to_string(file) {
        Ok(text) => {
            // Editors add a final newline; the password is the rest.
            let password = text.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                errs.push(path, format!("{} is empty", file.display()));
                return None;
            }
            Some(EtcdAuth {
                username: username.to_owned(),
                password_file: file.to_path_buf(),
                password,
            })
        }
        Err(e) => {
            errs.push(path, format!("cannot read {}: {e}", file.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    const BASE: &str = "listeners: [{ bind: \"127.0.0.1:0\" }]\nupstreams: { a: { backends: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, split: [{ upstream: a, weight: 1 }] }]\n";

    fn errors(cluster: &str) -> Vec<(String, String)> {
        match parse_str(&format!("{BASE}cluster: {cluster}\n")) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn a_minimal_cluster_gets_its_defaults() {
        let c = parse_str(&format!(
            "{BASE}cluster: {{ name: shop, node: a-1, etcd: {{ endpoints: [\"http://127.0.0.1:2379\", \"http://etcd-1\"] }} }}\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((c.name.as_str(), c.node.as_str()), ("shop", "a-1"));
        assert_eq!(c.lease_ttl, super::DEFAULT_LEASE_TTL);
        assert_eq!(c.publish_interval, super::DEFAULT_PUBLISH_INTERVAL);
        assert_eq!(c.etcd.endpoints[1].to_string(), "http://etcd-1:2379");
        assert!(c.etcd.tls.is_none() && c.etcd.auth.is_none());
        let without = parse_str(BASE).unwrap();
        assert!(without.cluster.is_none());
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let errs = errors(
            "{ name: \"a/b\", node: \"x y\", lease_ttl: 1s, publish_interval: 10ms, etcd: { endpoints: [\"127.0.0.1:2379\", \"https://e:2379/x\"], username: root } }",
        );
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cluster.name",
                "cluster.node",
                "cluster.lease_ttl",
                "cluster.publish_interval",
                "cluster.etcd.endpoints[0]",
                "cluster.etcd.endpoints[1]",
                "cluster.etcd.password_file",
            ],
            "{errs:#?}"
        );
        let errs = errors("{ name: a, node: b, etcd: { endpoints: [\"http://e:1\"], tls: {} } }");
        assert_eq!(errs[0].0, "cluster.etcd.tls", "{errs:?}");
        let errs =
            errors("{ name: a, node: b, etcd: { endpoints: [\"http://e:1\", \"https://f:1\"] } }");
        assert!(errs[0].1.contains("mixes"), "{errs:?}");
        let errs = errors(
            "{ name: a, node: b, etcd: { endpoints: [\"http://e:1\"], username: u, password_file: /nonexistent/pw } }",
        );
        assert_eq!(errs[0].0, "cluster.etcd.password_file");
        assert!(
            errors("{ name: a, node: b, etcd: { endpoints: [] } }")[0]
                .1
                .contains("no endpoints")
        );
        let errs = errors("{ name: a, nod: b, etcd: { endpoints: [\"http://e:1\"] } }");
        assert!(errs[0].1.contains("did you mean `node`"), "{errs:?}");
    }

    #[test]
    fn the_password_is_read_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("sy-etcd-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret pass\n").unwrap();
        let c = parse_str(&format!(
            "{BASE}cluster: {{ name: a, node: b, etcd: {{ endpoints: [\"http://e:1\"], username: u, password_file: \"{}\" }} }}\n",
            file.display()
        ))
        .unwrap()
        .cluster
        .unwrap();
        let auth = c.etcd.auth.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password()),
            ("u", "s3cret pass")
        );
        assert!(!format!("{auth:?}").contains("s3cret"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
