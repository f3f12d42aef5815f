//! An upstream's client TLS: trusted roots (the system's or a `ca_file`), an optional client
//! certificate for mTLS, and the name expected on the backends' certificates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

use super::errors::Errors;
use super::tls::{
    CertFiles, VERSIONS, checked_pair, load_certified, provider, read_chain, read_key,
};

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
    // Every failure below must be reported: returning `None` quietly would leave the upstream
    // without TLS.
    let builder =
        match ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS) {
            Ok(b) => b.with_root_certificates(roots),
            Err(e) => {
                errs.push(&tpath, format!("cannot set up TLS: {e}"));
                return None;
            }
        };
    let mut client = match &client_cert {
        Some(files) => {
            // Read again (checked above): the chain and the key as rustls wants them.
            let pair = load_certified(files)
                .map_err(|(_, why)| why)
                .and_then(|ck| Ok((ck.cert.clone(), read_key(&files.key)?)))
                .and_then(|(chain, key)| {
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| e.to_string())
                });
            match pair {
                Ok(c) => c,
                Err(why) => {
                    errs.push(format!("{tpath}.client_key"), why);
                    return None;
                }
            }
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
}
