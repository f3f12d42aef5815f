//! Certificate reload on real sockets: by file replace (rename), Kubernetes Secret symlink
//! swap, config reload and reload command; a bad file refused while the old one keeps serving;
//! open connections go on.

use std::path::Path;
use std::time::Duration;

use crate::support::proxy::{TempDir, sample, write_atomic};
use crate::support::tls::{self, Ca, Http, p, tls_config};
use crate::support::*;

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
    let m = proxy.wait_metric(rejected, 1.0).await;
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

/// A new certificate that no longer covers an SNI entry's names is refused like a bad file.
/// Both files change at once (a Secret-style symlink swap), so the pair itself is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_that_does_not_cover_its_names_is_refused() {
    use std::os::unix::fs::symlink;
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let root = &dir.0;
    let v1 = ca.server(&["named.example.test"]);
    std::fs::create_dir(root.join("..v1")).unwrap();
    v1.write(&root.join("..v1"), "tls");
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let (c, k) = (p(&root.join("tls.crt")), p(&root.join("tls.key")));
    let proxy = Proxy::start(&tls_config(
        &format!(
            "{{ sni: [{{ server_names: [named.example.test], cert: \"{c}\", key: \"{k}\" }}] }}"
        ),
        &backend,
    ))
    .await;

    let wrong = ca.server(&["other.example.test"]);
    std::fs::create_dir(root.join("..v2")).unwrap();
    wrong.write(&root.join("..v2"), "tls");
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();

    let rejected = "switchyard_tls_cert_reloads_total{result=\"rejected\"}";
    let m = proxy.wait_metric(rejected, 1.0).await;
    let applied = "switchyard_tls_cert_reloads_total{result=\"applied\"}";
    assert_eq!(sample(&m, applied), Some(0.0));
    let stream = tls::connect(proxy.addr, "named.example.test", &[b"http/1.1"]).await;
    assert!(tls::served(&stream) == v1.der);
}

/// `switchyard_tls_certificate_expiry_timestamp_seconds`: one series per name a listener
/// serves, at the notAfter of the certificate in service; it follows a replaced file and goes
/// away with the listener's `tls:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_exported_per_name_and_follows_the_certificates() {
    let backend = TestBackend::start("app").await;
    let ca = Ca::new();
    let dir = TempDir::new();
    let default = ca.server_until(&["default.example.test"], (2031, 1, 2));
    let named = ca.server_until(&["a.example.test", "*.b.example.test"], (2030, 6, 1));
    let (dc, dk) = default.write(&dir.0, "default");
    let (nc, nk) = named.write(&dir.0, "named");
    let tls_yaml = format!(
        "{{ cert: \"{}\", key: \"{}\", sni: [{{ server_names: [a.example.test, \"*.b.example.test\"], cert: \"{}\", key: \"{}\" }}] }}",
        p(&dc),
        p(&dk),
        p(&nc),
        p(&nk)
    );
    let config = tls_config(&tls_yaml, &backend);
    let proxy = Proxy::start(&config).await;
    let series = |name: &str| {
        format!(
            "switchyard_tls_certificate_expiry_timestamp_seconds{{listener=\"secure\",server_name=\"{name}\"}}"
        )
    };
    // 2031-01-02 and 2030-06-01, 00:00 UTC.
    let m = proxy.metrics().await;
    assert_eq!(sample(&m, &series("")), Some(1_925_078_400.0), "{m}");
    assert_eq!(sample(&m, &series("a.example.test")), Some(1_906_502_400.0));
    assert_eq!(
        sample(&m, &series("*.b.example.test")),
        Some(1_906_502_400.0)
    );

    let renewed = ca.server_until(&["a.example.test", "*.b.example.test"], (2032, 3, 4));
    write_atomic(&nk, &renewed.key_pem);
    write_atomic(&nc, &renewed.cert_pem);
    wait_for_cert(&proxy, "a.example.test", &renewed).await;
    let m = proxy.metrics().await;
    assert_eq!(sample(&m, &series("a.example.test")), Some(1_961_971_200.0));
    assert_eq!(sample(&m, &series("")), Some(1_925_078_400.0), "{m}");

    let plain = config.replace(&format!(", tls: {tls_yaml}"), "");
    assert_ne!(plain, config);
    let ev = proxy.rewrite(&plain).await;
    assert_eq!(ev.rejected, 0);
    let m = proxy.metrics().await;
    assert!(
        !m.contains("switchyard_tls_certificate_expiry_timestamp_seconds{"),
        "{m}"
    );
}
