//! The client side of TLS to a backend: SNI and certificate checks against the backend's host
//! (or the upstream's `server_name`), the upstream's roots and optional client certificate.

use std::io;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::model::{BackendAddr, Protocol, UpstreamTls};

/// The name a backend's certificate must carry: `server_name` if set, else its host.
pub fn server_name(tls: &UpstreamTls, addr: &BackendAddr) -> io::Result<ServerName<'static>> {
    let host = match &tls.server_name {
        Some(n) => n.as_str(),
        None => addr
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{host}` cannot be checked against a certificate: {e}"),
        )
    })
}

/// TLS over a connected socket, with the upstream's own client config. A failure here is a
/// connect failure: nothing was sent.
pub async fn connect(
    tls: &UpstreamTls,
    addr: &BackendAddr,
    stream: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    connect_with(&tls.client, tls, addr, stream).await
}

/// [`connect`] with `client` (the upstream's config with the protocol's ALPN offer).
pub async fn connect_with(
    client: &Arc<ClientConfig>,
    tls: &UpstreamTls,
    addr: &BackendAddr,
    stream: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let name = server_name(tls, addr)?;
    TlsConnector::from(Arc::clone(client))
        .connect(name, stream)
        .await
}

/// The upstream's client config offering what `protocol` speaks by ALPN: nothing for `http1`
/// (as before there was a choice), `h2` for `http2`, both (`h2` first) for `auto`.
pub fn with_alpn(client: &Arc<ClientConfig>, protocol: Protocol) -> Arc<ClientConfig> {
    let alpn: &[&[u8]] = match protocol {
        Protocol::Http1 => return Arc::clone(client),
        Protocol::Http2 => &[b"h2"],
        Protocol::Auto => &[b"h2", b"http/1.1"],
    };
    let mut c = ClientConfig::clone(client);
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}
