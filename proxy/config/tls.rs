//! TLS settings of a listener: its certificates (one, or several chosen by SNI), and the
//! certificate loading shared with [`super::upstream_tls`].
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
use serde::Deserialize;

use super::errors::Errors;

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
    super::read::read_regular(path)
}

pub(super) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
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

pub(super) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
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
        let before_pair = errs.len();
        let files = checked_pair(&spath, "cert", &s.cert, "key", &s.key, errs);
        if errs.len() == before_pair
            && let Ok(ck) = load_certified(&files)
        {
            for (j, n) in s.server_names.iter().enumerate() {
                if let Some(why) = name_pattern(n).and_then(|p| not_covered(&ck, &p, &files)) {
                    errs.push(format!("{spath}.server_names[{j}]"), why);
                }
            }
        }
        sni.push(SniCert { names, files });
    }
    (errs.len() == before).then_some(ListenerTls { default, sni })
}

/// Why clients asking for `pattern` would refuse this certificate, if they would: its names
/// (SAN) do not cover the pattern. A wildcard pattern needs a wildcard certificate.
pub fn not_covered(ck: &CertifiedKey, pattern: &NamePattern, files: &CertFiles) -> Option<String> {
    let (probe, shown) = match pattern {
        NamePattern::Exact(n) => (n.clone(), n.clone()),
        NamePattern::Wildcard(n) => (format!("switchyard-sni-check.{n}"), format!("*.{n}")),
    };
    let leaf = ck.end_entity_cert().ok()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let name = rustls::pki_types::ServerName::try_from(probe.as_str()).ok()?;
    cert.verify_is_valid_for_subject_name(&name).err().map(|_| {
        format!(
            "the certificate in `{}` is not valid for `{shown}` (see its subject alternative names), so clients asking for it would refuse the connection",
            files.cert.display()
        )
    })
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
pub(super) fn checked_pair(
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

#[cfg(test)]
mod tests {
    use super::*;

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
