//! TLS for tests: certificates made at run time (rcgen), a TLS client that reports which
//! certificate it was shown, and an HTTPS backend that can require client certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::client::Resp;

fn provider() -> Arc<CryptoProvider> {
    switchyard::config::tls::provider()
}

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A server certificate for `names` valid until midnight UTC of (year, month, day).
    pub fn server_until(&self, names: &[&str], (y, m, d): (i32, u8, u8)) -> Leaf {
        self.leaf_with(names, &[ExtendedKeyUsagePurpose::ServerAuth], |p| {
            p.not_after = rcgen::date_time_ymd(y, m, d);
        })
    }

    /// A client certificate (for mTLS) named `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A certificate for both ends (etcd's gateway dials its own server with it).
    pub fn server_and_client(&self, names: &[&str]) -> Leaf {
        self.leaf(
            names,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn leaf(&self, names: &[&str], usages: &[ExtendedKeyUsagePurpose]) -> Leaf {
        self.leaf_with(names, usages, |_| {})
    }

    fn leaf_with(
        &self,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = usages.to_vec();
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

impl Leaf {
    /// Writes `STEM.crt` and `STEM.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// Accepts whatever certificate the server shows: these tests look at which one it chose (with
/// the handshake signature still checked, so the server must hold the key).
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to switchyard asking for `sni` and offering `alpn`.
pub async fn connect(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    connect_with(addr, sni, alpn, rustls::DEFAULT_VERSIONS).await
}

/// [`connect`] offering only `versions`.
pub async fn connect_with(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsStream<TcpStream> {
    connect_as(&client_config(alpn, versions), addr, sni).await
}

/// A client config that accepts any server certificate; its session cache lets a second
/// connection resume.
pub fn client_config(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection with `config`.
pub async fn connect_as(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {sni} failed: {e}"))
}

/// The leaf certificate the server showed.
pub fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/1.1 or HTTP/2 connection over one TLS stream.
pub enum Http {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Http {
    /// Speaks what ALPN chose.
    pub async fn over(stream: TlsStream<TcpStream>) -> Http {
        if alpn(&stream).as_deref() == Some(b"h2") {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Http::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            Http::H1(send)
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        let resp = match self {
            Http::H1(s) => {
                let req = Request::get(path)
                    .header("host", host)
                    .body(Empty::new())
                    .unwrap();
                s.send_request(req).await
            }
            Http::H2(s) => {
                let uri = format!("https://{host}{path}");
                s.send_request(Request::get(uri).body(Empty::new()).unwrap())
                    .await
            }
        }
        .expect("request over TLS failed");
        let (parts, body) = resp.into_parts();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

/// An HTTPS backend on 127.0.0.1:0 that answers `200 client=<CN of the client certificate or
/// none>`; with a client CA it requires a client certificate signed by it.
pub struct TlsBackend {
    pub addr: SocketAddr,
    /// Requests answered (handshakes that failed never get here).
    pub answered: Arc<AtomicU64>,
    pub health_checks: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    pub async fn start(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsBackend {
        Self::start_alpn(leaf, client_ca, &[]).await
    }

    /// A backend that offers `alpn` (e.g. `h2`) and speaks HTTP/1.1 or HTTP/2, whichever the
    /// client starts with; `x-version` in its answers says which.
    pub async fn start_alpn(leaf: &Leaf, client_ca: Option<&Ca>, alpn: &[&[u8]]) -> TlsBackend {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![leaf.der.clone()], leaf.key_der())
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let health_checks = Arc::new(AtomicU64::new(0));
        let (a, h) = (Arc::clone(&answered), Arc::clone(&health_checks));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (a, h) = (Arc::clone(&a), Arc::clone(&h));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| common_name(c))
                        .unwrap_or_else(|| "none".to_owned());
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counter = if req.uri().path() == "/healthz" {
                            &h
                        } else {
                            &a
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = format!("client={client}\n");
                        let version = format!("{:?}", req.version());
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(StatusCode::OK)
                                    .header("x-version", version)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        TlsBackend {
            addr,
            answered,
            health_checks,
            task,
        }
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The subject CN of a certificate made by [`Ca`] (found by its DER encoding: OID 2.5.4.3 then
/// a UTF8String).
fn common_name(cert: &CertificateDer<'_>) -> String {
    let der = cert.as_ref();
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    // The issuer's CN comes first; the subject's is the last one.
    let Some(at) = der.windows(oid.len()).rposition(|w| w == oid) else {
        return "?".to_owned();
    };
    let value = &der[at + oid.len()..];
    let len = usize::from(value.get(1).copied().unwrap_or(0));
    String::from_utf8_lossy(value.get(2..2 + len).unwrap_or_default()).into_owned()
}

/// A config with one TLS listener (`tls_yaml` is its `tls:` value) in front of `backend`.
pub fn tls_config(tls_yaml: &str, backend: &super::TestBackend) -> String {
    format!(
        "listeners: [{{ name: secure, bind: \"127.0.0.1:0\", tls: {tls_yaml} }}]\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\n\
         upstreams:\n  app: {{ backends: {} }}\n\
         routes:\n  - {{ name: r, split: [{{ upstream: app, weight: 1 }}] }}\n",
        super::addrs(&[backend])
    )
}

/// A path as YAML text.
pub fn p(path: &Path) -> String {
    path.display().to_string()
}
