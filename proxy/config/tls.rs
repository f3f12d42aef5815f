//! TLS settings: a listener's certificates (one, or several chosen by SNI) and an upstream's
//! client side (roots, mTLS certificate, server name).
//!
//! Certificate files are read and checked while the config is validated, so a missing file, a
//! file without PEM in it or a key that belongs to another certificate is reported like any
//! other config error, with its YAML path; the running config then stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

use super::validate::Errors;

/// `tls:` on a listener as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    /// The default certificate: for clients whose SNI name matches no `sni` entry (or who send
    /// none).
    pub cert: Option<String>,
    pub key: Option<String>,
    #[serde(default)]
    pub sni: Vec<SniFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    pub server_names: Vec<String>,
    pub cert: String,
    pub key: String,
}

/// `tls:` on an upstream as written; `tls: {}` means TLS with the system roots.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Name sent as SNI and checked against the backend's certificate; default: its host.
    pub server_name: Option<String>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A name a certificate is served for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// Lowercase.
    Exact(String),
    /// `*.example.com` stored as `example.com`: one more label in front of it, as certificate
    /// wildcards match.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    pub names: Vec<NamePattern>,
    pub files: CertFiles,
}

/// A TLS listener's certificates. Without `default`, the first `sni` entry is the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub default: Option<CertFiles>,
    pub sni: Vec<SniCert>,
}

impl ListenerTls {
    /// Every file read to serve this listener (for the watcher).
    pub fn files(&self) -> Vec<PathBuf> {
        self.default
            .iter()
            .chain(self.sni.iter().map(|s| &s.files))
            .flat_map(|f| [f.cert.clone(), f.key.clone()])
            .collect()
    }
}

/// An upstream's client TLS: the spec as written (compared on reload) and the client config
/// built from it.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<CertFiles>,
    pub server_name: Option<String>,
    pub client: Arc<ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file
            && self.client_cert == other.client_cert
            && self.server_name == other.server_name
    }
}

impl Eq for UpstreamTls {}

/// The one crypto provider: ring (no cmake or NASM needed to build it).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// TLS 1.3 and 1.2; nothing older.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Which file of a pair is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// Reads a certificate chain and its key, and checks that they belong together.
pub fn load_certified(files: &CertFiles) -> Result<Arc<CertifiedKey>, (Which, String)> {
    let chain = read_chain(&files.cert).map_err(|e| (Which::Cert, e))?;
    let key = read_key(&files.key).map_err(|e| (Which::Key, e))?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| {
        (
            Which::Key,
            format!("`{}` is not a usable private key: {e}", files.key.display()),
        )
    })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err((
            Which::Key,
            format!(
                "the key in `{}` does not belong to the certificate in `{}`",
                files.key.display(),
                files.cert.display()
            ),
        )),
        Err(e) => Err((
            Which::Cert,
            format!(
                "`{}` is not a usable certificate: {e}",
                files.cert.display()
            ),
        )),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "`{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "`{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        e => format!("`{}` is not valid PEM: {e}", path.display()),
    })
}

/// Validates a listener's `tls:`, reading every file it names.
pub(super) fn listener_tls(
    path: &str,
    f: &ListenerTlsFile,
    errs: &mut Errors,
) -> Option<ListenerTls> {
    let before = errs.len();
    let default = match (&f.cert, &f.key) {
        (Some(cert), Some(key)) => Some(checked_pair(path, "cert", cert, "key", key, errs)),
        (None, None) if !f.sni.is_empty() => None,
        (None, None) => {
            errs.push(
                path,
                "set `cert` and `key`, or `sni: [{ server_names: [..], cert, key }]`",
            );
            None
        }
        (Some(_), None) => {
            errs.push(format!("{path}.key"), "`cert` is set but `key` is missing");
            None
        }
        (None, Some(_)) => {
            errs.push(format!("{path}.cert"), "`key` is set but `cert` is missing");
            None
        }
    };
    let mut sni = Vec::new();
    let mut seen: Vec<(NamePattern, usize)> = Vec::new();
    for (i, s) in f.sni.iter().enumerate() {
        let spath = format!("{path}.sni[{i}]");
        if s.server_names.is_empty() {
            errs.push(
                format!("{spath}.server_names"),
                "list at least one name, e.g. [shop.example.com, \"*.example.com\"]",
            );
        }
        let mut names = Vec::new();
        for (j, n) in s.server_names.iter().enumerate() {
            let npath = format!("{spath}.server_names[{j}]");
            let Some(pattern) = name_pattern(n) else {
                errs.push(
                    npath,
                    format!(
                        "`{n}` is not a server name; write e.g. shop.example.com or *.example.com"
                    ),
                );
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(p, _)| *p == pattern) {
                errs.push(
                    npath,
                    format!("`{n}` is already served by {path}.sni[{first}]"),
                );
                continue;
            }
            seen.push((pattern.clone(), i));
            names.push(pattern);
        }
        let files = checked_pair(&spath, "cert", &s.cert, "key", &s.key, errs);
        sni.push(SniCert { names, files });
    }
    (errs.len() == before).then_some(ListenerTls { default, sni })
}

/// `shop.example.com` or `*.example.com`, lowercased; `None` if it is neither.
pub fn name_pattern(name: &str) -> Option<NamePattern> {
    let lower = name.to_ascii_lowercase();
    let (wild, host) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, lower),
    };
    let ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    match (ok, wild) {
        (false, _) => None,
        (true, true) => Some(NamePattern::Wildcard(host)),
        (true, false) => Some(NamePattern::Exact(host)),
    }
}

/// The pair as paths; each file's problem is reported at its own key.
fn checked_pair(
    path: &str,
    cert_key: &str,
    cert: &str,
    key_key: &str,
    key: &str,
    errs: &mut Errors,
) -> CertFiles {
    let files = CertFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    };
    if let Err((which, why)) = load_certified(&files) {
        let at = match which {
            Which::Cert => cert_key,
            Which::Key => key_key,
        };
        errs.push(format!("{path}.{at}"), why);
    }
    files
}

/// The system's trusted roots (the OS store, where operators add their own CAs), read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                Err("no trusted root certificates found on this system (install ca-certificates), so backends cannot be verified; set `ca_file`".to_owned())
            } else {
                Ok(Arc::new(store))
            }
        })
        .clone()
}

/// A backend written `https://host[:port]` as plain `host:port` (443 when no port is given);
/// anything else as it is.
pub fn without_https(backend: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = backend.strip_prefix("https://") else {
        return backend.into();
    };
    match rest.parse::<http::uri::Authority>() {
        Ok(a) if a.port().is_none() && !rest.contains('/') => format!("{rest}:443").into(),
        _ => rest.into(),
    }
}

/// Validates an upstream's client TLS and builds its client config. `tls` is `None` when the
/// upstream has no `tls:` block but `https://` backends.
pub(super) fn upstream_tls(
    path: &str,
    tls: Option<&UpstreamTlsFile>,
    errs: &mut Errors,
) -> Option<UpstreamTls> {
    let default = UpstreamTlsFile::default();
    let f = tls.unwrap_or(&default);
    let tpath = format!("{path}.tls");
    let before = errs.len();
    let roots = match &f.ca_file {
        Some(ca) => match read_chain(Path::new(ca)) {
            Ok(certs) => {
                let mut store = RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    errs.push(
                        format!("{tpath}.ca_file"),
                        format!("`{ca}` holds no usable CA certificate"),
                    );
                }
                Arc::new(store)
            }
            Err(why) => {
                errs.push(format!("{tpath}.ca_file"), why);
                Arc::new(RootCertStore::empty())
            }
        },
        None => system_roots().unwrap_or_else(|why| {
            errs.push(&tpath, why);
            Arc::new(RootCertStore::empty())
        }),
    };
    let client_cert = match (&f.client_cert, &f.client_key) {
        (Some(cert), Some(key)) => Some(checked_pair(
            &tpath,
            "client_cert",
            cert,
            "client_key",
            key,
            errs,
        )),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                format!("{tpath}.client_key"),
                "`client_cert` is set but `client_key` is missing",
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                format!("{tpath}.client_cert"),
                "`client_key` is set but `client_cert` is missing",
            );
            None
        }
    };
    let server_name = f.server_name.as_ref().map(|n| n.to_ascii_lowercase());
    if let Some(n) = &server_name
        && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        errs.push(
            format!("{tpath}.server_name"),
            format!("`{n}` is not a DNS name or IP address"),
        );
    }
    if errs.len() != before {
        return None;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .ok()?
        .with_root_certificates(roots);
    let mut client = match &client_cert {
        Some(files) => {
            let ck = load_certified(files).ok()?;
            let key = read_key(&files.key).ok()?;
            builder
                .with_client_auth_cert(ck.cert.clone(), key)
                .map_err(|e| errs.push(format!("{tpath}.client_key"), e.to_string()))
                .ok()?
        }
        None => builder.with_no_client_auth(),
    };
    // HTTP/1.1 upstream connections only (the pool speaks HTTP/1.1).
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(UpstreamTls {
        ca_file: f.ca_file.as_ref().map(PathBuf::from),
        client_cert,
        server_name,
        client: Arc::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_backends_default_to_port_443() {
        assert_eq!(
            without_https("https://api.example.com"),
            "api.example.com:443"
        );
        assert_eq!(without_https("https://10.0.0.1:8443"), "10.0.0.1:8443");
        assert_eq!(without_https("https://[::1]"), "[::1]:443");
        assert_eq!(without_https("10.0.0.1:80"), "10.0.0.1:80");
        assert_eq!(without_https("http://a:80"), "http://a:80");
    }

    #[test]
    fn server_name_patterns() {
        assert_eq!(
            name_pattern("Shop.Example.com"),
            Some(NamePattern::Exact("shop.example.com".into()))
        );
        assert_eq!(
            name_pattern("*.example.com"),
            Some(NamePattern::Wildcard("example.com".into()))
        );
        for bad in ["", "*.", "a..b", "a.*.b", "a b", "a:443", "*"] {
            assert_eq!(name_pattern(bad), None, "{bad}");
        }
    }
}
