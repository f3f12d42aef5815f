//! TLS listeners on real sockets: certificates by SNI (exact, wildcard, default), ALPN h2 and
//! http/1.1 over TLS 1.3 and 1.2, session resumption, `X-Forwarded-Proto: https`, handshake
//! errors, certificate config errors. Reload: tls_reload.rs; upstreams: tls_upstream.rs.

use std::time::Duration;

use crate::support::proxy::{TempDir, sample};
use crate::support::tls::{self, Ca, Http, p, tls_config};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_default_and_backends_see_https() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let (shop, api, fallback) = (
        ca.server(&["shop.example.test"]),
        ca.server(&["*.api.example.test"]),
        ca.server(&["fallback.example.test"]),
    );
    let (shop_c, shop_k) = shop.write(&dir.0, "shop");
    let (api_c, api_k) = api.write(&dir.0, "api");
    let (def_c, def_k) = fallback.write(&dir.0, "default");
    let yaml = format!(
        "{{ cert: \"{}\", key: \"{}\", sni: [\
         {{ server_names: [shop.example.test], cert: \"{}\", key: \"{}\" }}, \
         {{ server_names: [\"*.api.example.test\"], cert: \"{}\", key: \"{}\" }}] }}",
        p(&def_c),
        p(&def_k),
        p(&shop_c),
        p(&shop_k),
        p(&api_c),
        p(&api_k)
    );
    let proxy = Proxy::start(&tls_config(&yaml, &backend)).await;

    for (sni, want, label) in [
        ("shop.example.test", &shop, "exact name"),
        ("v2.api.example.test", &api, "wildcard"),
        (
            "deep.v2.api.example.test",
            &fallback,
            "two labels under a wildcard: default",
        ),
        ("other.example.test", &fallback, "unknown name: default"),
    ] {
        let stream = tls::connect(proxy.addr, sni, &[b"http/1.1"]).await;
        assert!(
            tls::served(&stream) == want.der,
            "{label}: wrong certificate for {sni}"
        );
        let resp = Http::over(stream).await.get(sni, "/").await;
        assert_eq!(resp.status, 200, "{label}");
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(s.headers["x-forwarded-proto"], "https");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_and_http1_over_tls_1_3_and_1_2() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let (c, k) = ca.server(&["h2.example.test"]).write(&dir.0, "cert");
    let proxy = Proxy::start(&tls_config(
        &format!("{{ cert: \"{}\", key: \"{}\" }}", p(&c), p(&k)),
        &backend,
    ))
    .await;

    let stream = tls::connect(proxy.addr, "h2.example.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls::alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let version = stream.get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    let mut h2 = Http::over(stream).await;
    assert!(matches!(h2, Http::H2(_)));
    for _ in 0..3 {
        let resp = h2.get("h2.example.test", "/via-h2").await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "app\n"));
        assert_eq!(resp.headers.get("x-backend").unwrap(), "app");
    }

    // A TLS 1.2 client is served too (HTTP/1.1 by ALPN).
    let stream = tls::connect_with(
        proxy.addr,
        "h2.example.test",
        &[b"http/1.1"],
        &[&rustls::version::TLS12],
    )
    .await;
    assert_eq!(tls::alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let version = stream.get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    let resp = Http::over(stream)
        .await
        .get("h2.example.test", "/via-h1")
        .await;
    assert_eq!(resp.status, 200);

    let seen = backend.seen();
    assert_eq!(seen.iter().filter(|s| s.uri.path() == "/via-h2").count(), 3);
    assert!(
        seen.iter()
            .all(|s| s.headers["x-forwarded-proto"] == "https")
    );
}

/// A returning client resumes its session (TLS 1.3 tickets, TLS 1.2 session ids) instead of a
/// full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_resume_their_sessions() {
    use rustls::HandshakeKind::{Full, Resumed};
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let (c, k) = ca.server(&["resume.example.test"]).write(&dir.0, "cert");
    let proxy = Proxy::start(&tls_config(
        &format!("{{ cert: \"{}\", key: \"{}\" }}", p(&c), p(&k)),
        &backend,
    ))
    .await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = tls::client_config(&[b"http/1.1"], &[version]);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let stream = tls::connect_as(&config, proxy.addr, "resume.example.test").await;
            kinds.push(stream.get_ref().1.handshake_kind());
            // A request and its answer: TLS 1.3 tickets arrive after the handshake.
            let resp = Http::over(stream)
                .await
                .get("resume.example.test", "/")
                .await;
            assert_eq!(resp.status, 200);
        }
        assert_eq!(kinds, [Some(Full), Some(Resumed)], "{:?}", version.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_listener_is_a_counted_handshake_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let (c, k) = ca.server(&["x.example.test"]).write(&dir.0, "cert");
    let proxy = Proxy::start(&tls_config(
        &format!("{{ cert: \"{}\", key: \"{}\" }}", p(&c), p(&k)),
        &backend,
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The proxy closes the connection (after a TLS alert at most).
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("connection not closed")
        .ok();
    assert!(!buf.starts_with(b"HTTP/"), "answered plain HTTP");
    // tokio-rustls closes the socket inside the failed handshake, before switchyard counts
    // it: the client can see the close first, so the count is awaited, not read once.
    let m = proxy
        .wait_metric("switchyard_tls_handshake_errors_total", 1.0)
        .await;
    assert_eq!(
        sample(&m, "switchyard_tls_handshake_errors_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn certificate_problems_are_config_errors_with_their_paths() {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (c1, _) = ca.server(&["a.example.test"]).write(&dir.0, "one");
    let (_, k2) = ca.server(&["a.example.test"]).write(&dir.0, "two");
    let missing = dir.0.join("missing.crt");
    let yaml = format!(
        "listeners:\n\
         \x20 - {{ bind: \"127.0.0.1:0\", tls: {{ cert: \"{}\", key: \"{}\" }} }}\n\
         \x20 - {{ bind: \"127.0.0.1:0\", tls: {{ sni: [{{ server_names: [b.example.test], cert: \"{}\", key: \"{}\" }}] }} }}\n\
         upstreams: {{ a: {{ backends: [\"127.0.0.1:1\"] }} }}\n\
         routes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}] }}]\n",
        p(&c1),
        p(&k2),
        p(&missing),
        p(&k2)
    );
    let errors = switchyard::config::parse_str(&yaml).unwrap_err().0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["listeners[0].tls.key", "listeners[1].tls.sni[0].cert"],
        "{errors:?}"
    );
    assert!(
        errors[0]
            .message
            .contains("does not belong to the certificate")
    );
    assert!(errors[1].message.contains("cannot read"));
}
