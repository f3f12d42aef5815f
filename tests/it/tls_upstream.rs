//! TLS to upstreams on real sockets: mTLS, the expected server name, health checks over TLS;
//! `https://` backends and the system roots.

use std::time::Duration;

use crate::support::proxy::TempDir;
use crate::support::tls::{Ca, TlsBackend, p};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_an_upstream() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let server = ca.server(&["backend.example.test", "127.0.0.1"]);
    let backend = TlsBackend::start(&server, Some(&ca)).await;
    let ca_file = dir.0.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (cc, ck) = ca.client("proxy-client").write(&dir.0, "client");
    let url = format!("\"https://{}\"", backend.addr);
    let (ca_file, cc, ck) = (p(&ca_file), p(&cc), p(&ck));
    let yaml = format!(
        "{HEAD}upstreams:\n\
         \x20 mtls:\n    backends: [{url}]\n    tls: {{ ca_file: \"{ca_file}\", client_cert: \"{cc}\", client_key: \"{ck}\" }}\n\
         \x20   health_check: {{ path: /healthz, interval: 50ms, timeout: 1s }}\n\
         \x20 by-name:\n    backends: [{url}]\n    tls: {{ ca_file: \"{ca_file}\", client_cert: \"{cc}\", client_key: \"{ck}\", server_name: backend.example.test }}\n\
         \x20 no-client-cert:\n    backends: [{url}]\n    tls: {{ ca_file: \"{ca_file}\" }}\n\
         \x20 wrong-name:\n    backends: [{url}]\n    tls: {{ ca_file: \"{ca_file}\", client_cert: \"{cc}\", client_key: \"{ck}\", server_name: other.example.test }}\n\
         routes:\n\
         \x20 - {{ name: a, match: {{ path_prefix: /mtls }}, split: [{{ upstream: mtls, weight: 1 }}] }}\n\
         \x20 - {{ name: b, match: {{ path_prefix: /by-name }}, split: [{{ upstream: by-name, weight: 1 }}] }}\n\
         \x20 - {{ name: c, match: {{ path_prefix: /no-cert }}, split: [{{ upstream: no-client-cert, weight: 1 }}] }}\n\
         \x20 - {{ name: d, match: {{ path_prefix: /wrong-name }}, split: [{{ upstream: wrong-name, weight: 1 }}] }}\n"
    );
    let proxy = Proxy::start(&yaml).await;
    let c = client();

    let resp = get(&c, &proxy.url("/mtls")).await;
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (200, "client=proxy-client\n")
    );
    let resp = get(&c, &proxy.url("/by-name")).await;
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (200, "client=proxy-client\n")
    );
    assert_eq!(backend.answered(), 2);

    // Without a client certificate the backend refuses the handshake; with the wrong expected
    // name switchyard refuses the backend. Neither request reaches it.
    for path in ["/no-cert", "/wrong-name"] {
        let resp = get(&c, &proxy.url(path)).await;
        assert!(resp.status.is_server_error(), "{path}: {}", resp.status);
    }
    assert_eq!(backend.answered(), 2);

    // Health checks go over TLS too.
    for _ in 0..1000 {
        if backend
            .health_checks
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no health check reached the TLS backend");
}

/// `https://` backends with no `tls:` block trust the system's roots (scripts/test.sh installs
/// ca-certificates); the port defaults to 443.
#[test]
fn https_backends_use_the_system_roots_and_port_443() {
    let yaml = format!(
        "{HEAD}upstreams: {{ api: {{ backends: [\"https://api.example.com\"] }} }}\n\
         routes: [{{ name: r, split: [{{ upstream: api, weight: 1 }}] }}]\n"
    );
    let config = switchyard::config::parse_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let api = config.upstream("api").unwrap();
    assert_eq!(api.backends[0].as_str(), "api.example.com:443");
    let tls = api.transport.tls.as_ref().expect("https:// means TLS");
    assert_eq!((&tls.ca_file, &tls.server_name), (&None, &None));
    assert_eq!(tls.client.alpn_protocols, [b"http/1.1".to_vec()]);
}
