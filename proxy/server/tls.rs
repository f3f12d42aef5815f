//! TLS listeners: certificates chosen by SNI, re-read when their files change.
//!
//! A listener's rustls config is fixed for its TLS spec; its certificate resolver holds the
//! certificates behind an `ArcSwap`, so a certificate reload is one pointer swap: handshakes
//! from then on get the new certificates, established connections are not touched. A reload
//! that fails (a half-written file, a key that does not match) keeps the old certificates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::conn::{self, ServeCtx};
use super::limits::{ListenerLimits, OpenSlot};
use super::shutdown::Stop;
use crate::config::tls::{self, ListenerTls, NamePattern};
use crate::shared::Shared;
use crate::watch::{self, WatchGuard};

/// TLS 1.2 sessions kept per listener for resumption by session id.
const SESSION_CACHE: usize = 4096;

/// The certificates of one listener, by the name they are served for.
#[derive(Default, Clone)]
pub struct CertTable {
    /// Of every certificate chain, in order: tells a real change from a touched file.
    fingerprint: u64,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows the `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// (server name, earliest notAfter of the chain in unix seconds) of each entry; the name
    /// is empty for an explicit default certificate.
    expiry: Vec<(String, f64)>,
}

impl CertTable {
    /// Reads every certificate of `spec`; the errors name the files and what is wrong.
    pub fn load(spec: &ListenerTls) -> Result<CertTable, Vec<String>> {
        let mut table = CertTable::default();
        let mut errors = Vec::new();
        let load = |files, errors: &mut Vec<String>| match tls::load_certified(files) {
            Ok(ck) => Some(ck),
            Err((_, why)) => {
                errors.push(why);
                None
            }
        };
        if let Some(files) = &spec.default {
            table.default = load(files, &mut errors);
            if let Some(t) = table.default.as_deref().and_then(expires) {
                table.expiry.push((String::new(), t));
            }
        }
        for entry in &spec.sni {
            let Some(ck) = load(&entry.files, &mut errors) else {
                continue;
            };
            // A new certificate must still cover the names it is served for.
            errors.extend(
                entry
                    .names
                    .iter()
                    .filter_map(|n| tls::not_covered(&ck, n, &entry.files)),
            );
            let expiry = expires(&ck);
            for name in &entry.names {
                let (map, key, shown) = match name {
                    NamePattern::Exact(n) => (&mut table.exact, n, n.clone()),
                    NamePattern::Wildcard(n) => (&mut table.wildcard, n, format!("*.{n}")),
                };
                map.insert(key.clone(), Arc::clone(&ck));
                table.expiry.extend(expiry.map(|t| (shown, t)));
            }
            if table.default.is_none() && spec.default.is_none() {
                // No default given: the first entry serves names that match nothing.
                table.default = Some(ck);
            }
        }
        if errors.is_empty() {
            table.fingerprint = table.fingerprint();
            Ok(table)
        } else {
            Err(errors)
        }
    }

    /// A hash of every name and chain, independent of map order.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.default.as_ref().map(|ck| &ck.cert).hash(&mut h);
        for map in [&self.exact, &self.wildcard] {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (name, ck) in entries {
                name.hash(&mut h);
                ck.cert.hash(&mut h);
            }
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// The certificate for a client that asked for `sni` (already lowercase, as rustls gives
    /// it): an exact name, else a wildcard one label up, else the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.as_ref();
        };
        self.exact
            .get(name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .or(self.default.as_ref())
    }
}

/// Certificates read for a reload, off the workers, by the listener spec they were read for.
#[derive(Default)]
pub struct FreshCerts(Vec<(ListenerTls, Result<CertTable, Vec<String>>)>);

impl FreshCerts {
    /// Reads the certificates of every distinct spec (a blocking read: call it off the
    /// workers).
    pub fn read<'a>(specs: impl IntoIterator<Item = &'a ListenerTls>) -> FreshCerts {
        let mut out: Vec<(ListenerTls, Result<CertTable, Vec<String>>)> = Vec::new();
        for spec in specs {
            if !out.iter().any(|(s, _)| s == spec) {
                out.push((spec.clone(), CertTable::load(spec)));
            }
        }
        FreshCerts(out)
    }

    /// What was read for `spec`, if it was.
    pub fn get(&self, spec: &ListenerTls) -> Option<Result<CertTable, Vec<String>>> {
        self.0
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, t)| t.clone())
    }
}

/// When a chain stops working: the earliest notAfter of its certificates, in unix seconds.
/// rustls keeps certificates as DER and does not expose their validity, hence x509-parser.
fn expires(ck: &CertifiedKey) -> Option<f64> {
    ck.cert
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, cert)| cert.validity().not_after.timestamp() as f64)
        })
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::min)
}

/// Accepts the TLS handshake on a fresh connection, then serves it as HTTPS (HTTP/2 when the
/// client chose it by ALPN; the connection sniffs the preface either way). The handshake gets
/// the same bound as a request head, so a client cannot hold a socket open by stalling it.
pub async fn serve(
    tls: Arc<TlsListener>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<ServeCtx>,
    limits: Arc<ListenerLimits>,
    slot: OpenSlot,
    stop: Stop,
) {
    // The handshake is the first part of a request head: the same bound holds it.
    let bound = limits.spec.header_read_timeout;
    let handshake = tokio::time::timeout(bound, tls.acceptor.accept(stream));
    drop(tls);
    match handshake.await {
        Ok(Ok(stream)) => conn::serve(stream, peer, "https", ctx, limits, slot, stop).await,
        Ok(Err(e)) => {
            ctx.shared
                .counters
                .tls
                .handshake_errors
                .fetch_add(1, Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            ctx.shared
                .counters
                .tls
                .handshake_errors
                .fetch_add(1, Relaxed);
            tracing::debug!(%peer, "no TLS handshake within {bound:?}; closing");
        }
    }
}

/// Hands rustls the certificates in force at handshake time.
pub struct Resolver {
    table: ArcSwap<CertTable>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.load();
        f.debug_struct("Resolver")
            .field("exact", &t.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &t.wildcard.keys().collect::<Vec<_>>())
            .field("default", &t.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().pick(hello.server_name()).cloned()
    }
}

/// A TLS listener's acceptor, and the watch that reloads its certificates.
pub struct TlsListener {
    pub acceptor: TlsAcceptor,
    reload: Arc<CertReload>,
    _watch: Option<WatchGuard>,
}

/// What re-reading a listener's certificates needs.
struct CertReload {
    resolver: Arc<Resolver>,
    spec: ListenerTls,
    shared: Arc<Shared>,
    listener: String,
    /// Whose entry in `switchyard_tls_certificate_expiry_timestamp_seconds` this is.
    expiry_owner: u64,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.reload
            .shared
            .counters
            .tls
            .expiry
            .forget(self.reload.expiry_owner);
    }
}

impl TlsListener {
    /// Builds the acceptor for certificates already read (by [`CertTable::load`], off the
    /// workers) and (with `watch`) starts watching the files.
    pub fn start(
        spec: &ListenerTls,
        table: CertTable,
        shared: &Arc<Shared>,
        name: &str,
        watch: bool,
    ) -> Result<TlsListener, Vec<String>> {
        let certs = table.expiry.clone();
        let resolver = Arc::new(Resolver {
            table: ArcSwap::from_pointee(table),
        });
        let acceptor = TlsAcceptor::from(server_config(Arc::clone(&resolver) as _)?);
        // Nothing fails from here on, so the entry always has a TlsListener to take it away.
        let expiry = &shared.counters.tls.expiry;
        let expiry_owner = expiry.owner();
        expiry.set(expiry_owner, name, certs);
        let reload = Arc::new(CertReload {
            resolver,
            spec: spec.clone(),
            shared: Arc::clone(shared),
            listener: name.to_owned(),
            expiry_owner,
        });
        let watch = if watch {
            let r = Arc::clone(&reload);
            match watch::watch_with(&spec.files(), "certificates", move || r.run()) {
                Ok(w) => Some(w),
                Err(e) => {
                    // Serving matters more than reloading: say so and go on.
                    tracing::warn!(listener = %name, error = %e, "cannot watch the certificate files; they are re-read only on SIGHUP or POST /reload");
                    None
                }
            }
        } else {
            None
        };
        Ok(TlsListener {
            acceptor,
            reload,
            _watch: watch,
        })
    }

    /// The certificate files this listener serves from.
    pub fn spec(&self) -> &ListenerTls {
        &self.reload.spec
    }

    /// Puts certificates re-read from this listener's files (SIGHUP, `POST /reload`) into
    /// service, as a file change would.
    pub fn apply_certificates(&self, table: Result<CertTable, Vec<String>>) {
        self.reload.apply(table);
    }
}

/// TLS 1.2 and 1.3, ALPN h2 then http/1.1, certificates from `resolver`.
fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, Vec<String>> {
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::VERSIONS)
        .map_err(|e| vec![format!("cannot set up TLS: {e}")])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Returning clients resume instead of paying a full handshake: stateless tickets (keys
    // rotated by rustls every 6 hours), and a session cache for TLS 1.2 clients without them.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| vec![format!("cannot set up TLS session tickets: {e}")])?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

impl CertReload {
    /// Re-reads the certificate files (called by the watcher, on its own thread).
    fn run(&self) {
        self.apply(CertTable::load(&self.spec));
    }

    /// All of the certificates or none go into service. Files that load to the certificates
    /// already in service change nothing and count nothing.
    fn apply(&self, table: Result<CertTable, Vec<String>>) {
        let counters = &self.shared.counters.tls;
        let listener = &self.listener;
        match table {
            Ok(table) if table.fingerprint == self.resolver.table.load().fingerprint => {
                tracing::debug!(%listener, "certificates unchanged");
            }
            Ok(table) => {
                counters
                    .expiry
                    .set(self.expiry_owner, listener, table.expiry.clone());
                self.resolver.table.store(Arc::new(table));
                counters.cert_reloads_applied.fetch_add(1, Relaxed);
                tracing::info!(%listener, "certificates reloaded");
            }
            Err(errors) => {
                counters.cert_reloads_rejected.fetch_add(1, Relaxed);
                for e in &errors {
                    tracing::warn!(%listener, "certificate reload rejected: {e}");
                }
                tracing::warn!(%listener, "the previous certificates keep serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[(&str, &str)], default: Option<&str>) -> (CertTable, HashMap<String, usize>) {
        // Distinct keys stand in for distinct certificates: compare by pointer.
        let provider = tls::provider();
        let mut t = CertTable::default();
        let mut ids = HashMap::new();
        let mut mk = |label: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let signing = provider.key_provider.load_private_key(der).unwrap();
            let ck = Arc::new(CertifiedKey::new(Vec::new(), signing));
            ids.insert(label.to_owned(), Arc::as_ptr(&ck) as usize);
            ck
        };
        for (pattern, label) in names {
            let ck = mk(label);
            match tls::name_pattern(pattern).unwrap() {
                NamePattern::Exact(n) => t.exact.insert(n, ck),
                NamePattern::Wildcard(n) => t.wildcard.insert(n, ck),
            };
        }
        if let Some(label) = default {
            t.default = Some(mk(label));
        }
        (t, ids)
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let (t, ids) = table(
            &[("shop.example.com", "shop"), ("*.example.com", "wild")],
            Some("default"),
        );
        let got = |sni| t.pick(sni).map(|c| Arc::as_ptr(c) as usize);
        assert_eq!(got(Some("shop.example.com")), Some(ids["shop"]));
        assert_eq!(got(Some("api.example.com")), Some(ids["wild"]));
        // A wildcard covers one label, as in certificates.
        assert_eq!(got(Some("a.b.example.com")), Some(ids["default"]));
        assert_eq!(got(Some("example.com")), Some(ids["default"]));
        assert_eq!(got(None), Some(ids["default"]));
    }

    #[test]
    fn without_a_default_the_first_sni_entry_is_the_default() {
        let dir = std::env::temp_dir().join(format!("switchyard-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sni = Vec::new();
        let mut ders = Vec::new();
        for name in ["a.example.test", "b.example.test"] {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
            let files = tls::CertFiles {
                cert: dir.join(format!("{name}.crt")),
                key: dir.join(format!("{name}.key")),
            };
            std::fs::write(&files.cert, ck.cert.pem()).unwrap();
            std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
            ders.push(ck.cert.der().clone());
            sni.push(tls::SniCert {
                names: vec![tls::name_pattern(name).unwrap()],
                files,
            });
        }
        let spec = ListenerTls { default: None, sni };
        let t = CertTable::load(&spec).unwrap();
        let again = CertTable::load(&spec).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        // The same files load to the same fingerprint: a reload of them changes nothing.
        assert_eq!(t.fingerprint, again.fingerprint);
        let served = |sni| t.pick(sni).map(|c| c.cert[0].clone());
        assert_eq!(served(Some("b.example.test")).as_ref(), Some(&ders[1]));
        assert_eq!(served(Some("other.example.test")).as_ref(), Some(&ders[0]));
        assert_eq!(served(None).as_ref(), Some(&ders[0]));
    }

    #[test]
    fn no_default_no_certificate() {
        let (t, _) = table(&[("shop.example.com", "shop")], None);
        assert!(t.pick(Some("other.example.com")).is_none());
    }
}
