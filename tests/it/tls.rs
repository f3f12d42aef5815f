//! TLS on real sockets: certificates by SNI, ALPN h2, certificate reload by file replace (and a
//! bad file refused), `X-Forwarded-Proto: https`, TLS and mTLS to upstreams.

use std::path::Path;
use std::time::Duration;

use crate::support::proxy::{TempDir, sample, write_atomic};
use crate::support::tls::{self, Ca, Http, TlsBackend};
use crate::support::*;

/// A config with one TLS listener (`tls_yaml` is its `tls:` value) in front of `backend`.
fn tls_config(tls_yaml: &str, backend: &TestBackend) -> String {
    format!(
        "listeners: [{{ name: secure, bind: \"127.0.0.1:0\", tls: {tls_yaml} }}]\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\n\
         upstreams:\n  app: {{ backends: {} }}\n\
         routes:\n  - {{ name: r, split: [{{ upstream: app, weight: 1 }}] }}\n",
        addrs(&[backend])
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

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

/// Polls new handshakes until one shows `want` (bounded: 20 s).
async fn wait_for_cert(proxy: &Proxy, sni: &str, want: &tls::Leaf) {
    for _ in 0..1000 {
        let stream = tls::connect(proxy.addr, sni, &[b"http/1.1"]).await;
        if tls::served(&stream) == want.der {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("new handshakes never showed the new certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_handshakes_while_open_connections_go_on() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let v1 = ca.server(&["rotate.example.test"]);
    let (c, k) = v1.write(&dir.0, "tls");
    let proxy = Proxy::start(&tls_config(
        &format!("{{ cert: \"{}\", key: \"{}\" }}", p(&c), p(&k)),
        &backend,
    ))
    .await;

    let old = tls::connect(proxy.addr, "rotate.example.test", &[b"http/1.1"]).await;
    assert!(tls::served(&old) == v1.der);
    let mut old = Http::over(old).await;
    assert_eq!(old.get("rotate.example.test", "/before").await.status, 200);

    // Replaced the way cert-manager and editors do: write aside, rename over.
    let v2 = ca.server(&["rotate.example.test"]);
    write_atomic(&k, &v2.key_pem);
    write_atomic(&c, &v2.cert_pem);
    wait_for_cert(&proxy, "rotate.example.test", &v2).await;

    // The connection opened before the swap is still served, on its old session.
    let resp = old.get("rotate.example.test", "/after").await;
    assert_eq!(resp.status, 200);
    assert!(backend.seen().iter().any(|s| s.uri.path() == "/after"));
    let m = proxy.metrics().await;
    assert!(
        sample(&m, "switchyard_tls_cert_reloads_total{result=\"applied\"}") >= Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_file_is_refused_and_the_old_one_keeps_serving() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let v1 = ca.server(&["keep.example.test"]);
    let (c, k) = v1.write(&dir.0, "tls");
    let proxy = Proxy::start(&tls_config(
        &format!("{{ cert: \"{}\", key: \"{}\" }}", p(&c), p(&k)),
        &backend,
    ))
    .await;

    // A certificate whose key is not the one in the key file: refused as a pair.
    let other = ca.server(&["keep.example.test"]);
    write_atomic(&c, &other.cert_pem);
    let rejected = "switchyard_tls_cert_reloads_total{result=\"rejected\"}";
    let mut m = proxy.metrics().await;
    for _ in 0..1000 {
        if sample(&m, rejected) >= Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = proxy.metrics().await;
    }
    assert!(sample(&m, rejected) >= Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "switchyard_tls_cert_reloads_total{result=\"applied\"}"),
        Some(0.0)
    );

    let stream = tls::connect(proxy.addr, "keep.example.test", &[b"http/1.1"]).await;
    assert!(
        tls::served(&stream) == v1.der,
        "the old certificate must keep serving"
    );
    let resp = Http::over(stream).await.get("keep.example.test", "/").await;
    assert_eq!(resp.status, 200);
}

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

/// A Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..v1`; an update writes
/// `..v2` and renames a new `..data` symlink over the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_symlink_swap_reloads_the_certificate() {
    use std::os::unix::fs::symlink;
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let root = &dir.0;
    let v1 = ca.server(&["k8s.example.test"]);
    std::fs::create_dir(root.join("..v1")).unwrap();
    v1.write(&root.join("..v1"), "tls");
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let proxy = Proxy::start(&tls_config(
        &format!(
            "{{ cert: \"{}\", key: \"{}\" }}",
            p(&root.join("tls.crt")),
            p(&root.join("tls.key"))
        ),
        &backend,
    ))
    .await;
    let stream = tls::connect(proxy.addr, "k8s.example.test", &[b"http/1.1"]).await;
    assert!(tls::served(&stream) == v1.der);

    let v2 = ca.server(&["k8s.example.test"]);
    std::fs::create_dir(root.join("..v2")).unwrap();
    v2.write(&root.join("..v2"), "tls");
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    wait_for_cert(&proxy, "k8s.example.test", &v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_can_turn_tls_on_and_change_certificates() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let first = ca.server(&["reload.example.test"]);
    let second = ca.server(&["reload.example.test"]);
    let (c1, k1) = first.write(&dir.0, "first");
    let (c2, k2) = second.write(&dir.0, "second");
    let plain = format!(
        "{HEAD}upstreams:\n  app: {{ backends: {} }}\nroutes: [{{ name: r, split: [{{ upstream: app, weight: 1 }}] }}]\n",
        addrs(&[&backend])
    );
    let proxy = Proxy::start(&plain).await;
    assert_eq!(get(&client(), &proxy.url("/")).await.status, 200);

    // Same listener (matched by its bind as written), now with TLS: the running listener
    // switches for new connections.
    let with = |c: &Path, k: &Path| {
        plain.replace(
            "bind: \"127.0.0.1:0\" }]\nadmin",
            &format!(
                "bind: \"127.0.0.1:0\", tls: {{ cert: \"{}\", key: \"{}\" }} }}]\nadmin",
                p(c),
                p(k)
            ),
        )
    };
    let ev = proxy.rewrite(&with(&c1, &k1)).await;
    assert_eq!((ev.generation, ev.rejected), (2, 0));
    let stream = tls::connect(proxy.addr, "reload.example.test", &[b"http/1.1"]).await;
    assert!(tls::served(&stream) == first.der);
    let mut held = Http::over(stream).await;

    let ev = proxy.rewrite(&with(&c2, &k2)).await;
    assert_eq!((ev.generation, ev.rejected), (3, 0));
    let stream = tls::connect(proxy.addr, "reload.example.test", &[b"http/1.1"]).await;
    assert!(tls::served(&stream) == second.der);
    assert_eq!(held.get("reload.example.test", "/held").await.status, 200);
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
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "switchyard_tls_handshake_errors_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(backend.count(), 0);
}

/// Without file watching (`--no-watch`), certificates are re-read by a reload command
/// (SIGHUP, `POST /reload`), even when the config text is unchanged; the same files again
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_command_rereads_certificates() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let v1 = ca.server(&["hup.example.test"]);
    let (c, k) = v1.write(&dir.0, "tls");
    let config = tls_config(
        &format!("{{ cert: \"{}\", key: \"{}\" }}", p(&c), p(&k)),
        &backend,
    );
    let proxy = Proxy::start_with(&config, false).await;
    let v2 = ca.server(&["hup.example.test"]);
    write_atomic(&k, &v2.key_pem);
    write_atomic(&c, &v2.cert_pem);
    let stream = tls::connect(proxy.addr, "hup.example.test", &[b"http/1.1"]).await;
    assert!(tls::served(&stream) == v1.der, "nothing watches the files");

    let applied = "switchyard_tls_cert_reloads_total{result=\"applied\"}";
    for _ in 0..2 {
        proxy.running().reload.reload().await.unwrap();
        let stream = tls::connect(proxy.addr, "hup.example.test", &[b"http/1.1"]).await;
        assert!(tls::served(&stream) == v2.der);
        assert_eq!(sample(&proxy.metrics().await, applied), Some(1.0));
    }
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
