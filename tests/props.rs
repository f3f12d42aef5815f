//! Property tests (proptest), run with every `cargo test`:
//!
//! - the config parser never panics on arbitrary or mutated YAML, answers errors with their YAML
//!   path, and never accepts limits hyper would panic on;
//! - request header handling (the smuggling checks, then the rewrite for the backend) keeps its
//!   invariants on arbitrary header sets.
//!
//! Failing inputs proptest finds are kept in `tests/props.proptest-regressions` and replayed first.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use switchyard::config::limits::{Limits, Underscores};
use switchyard::config::parse_str;
use switchyard::http::{headers, validate};

/// Cases per property; failures are kept where CI and the next run replay them.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // `PROPTEST_CASES=100000 cargo test --test props` for a longer campaign.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/props.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

const BASE: &str = r#"listeners:
  - name: public
    bind: "127.0.0.1:8080"
    limits:
      max_request_header_bytes: 16384
      max_request_headers: 50
      header_read_timeout: 5s
      min_request_body_rate: { bytes_per_second: 100, grace: 2s }
      max_connections: 100
      max_request_body_bytes: 1000
      headers_with_underscores: reject
      http2: { max_concurrent_streams: 10, initial_stream_window_bytes: 65536 }
admin:
  bind: "127.0.0.1:9901"
upstreams:
  blue:
    backends: ["127.0.0.1:9001", "localhost:9002"]
    connect_timeout: 250ms
    circuit_breaker: { consecutive_failures: 3, window: 10s }
    health_check: { path: /healthz, interval: 1s }
  green:
    backends: ["127.0.0.1:9003"]
routes:
  - name: shop
    match: { host: "*.example.com", path_prefix: /shop, headers: { x-region: eu } }
    timeout: 2s
    retries: { attempts: 2, on: [connect-failure, 503] }
    split: [{ upstream: blue, weight: 95 }, { upstream: green, weight: 5 }]
    sticky: { cookie: session }
"#;

/// Values a careless or hostile edit puts where a value was.
const NASTY: &[&str] = &[
    "-1",
    "0",
    "1e999",
    "~",
    "[",
    "{",
    "{ a: b }",
    "[1, 2]",
    "''",
    "99999999999999999999999",
    "0s",
    "1h",
    "yes",
    "&a x",
    "*a",
    "!!binary aGk=",
    "\"\\u0000\"",
    "8191",
    "4294967296",
    "allow",
    "nope",
    "10 s",
    ":",
    "- x",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace what follows the first `: ` on a line.
    Value(usize, usize),
    Delete(usize),
    Duplicate(usize),
    Indent(usize),
    Dedent(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..NASTY.len()).prop_map(|(l, v)| Mutation::Value(l, v)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Duplicate),
        any::<usize>().prop_map(Mutation::Indent),
        any::<usize>().prop_map(Mutation::Dedent),
    ]
}

fn mutate(text: &str, muts: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for m in muts {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match *m {
            Mutation::Value(l, v) => {
                let line = &mut lines[l % n];
                if let Some(at) = line.find(": ") {
                    line.truncate(at + 2);
                    line.push_str(NASTY[v]);
                }
            }
            Mutation::Delete(l) => {
                lines.remove(l % n);
            }
            Mutation::Duplicate(l) => {
                let copy = lines[l % n].clone();
                lines.insert(l % n, copy);
            }
            Mutation::Indent(l) => lines[l % n].insert_str(0, "  "),
            Mutation::Dedent(l) => {
                let line = &mut lines[l % n];
                if line.starts_with("  ") {
                    line.drain(..2);
                }
            }
        }
    }
    lines.join("\n")
}

/// Errors about the whole document have no narrower place to point at.
fn whole_document(message: &str) -> bool {
    message.starts_with("the config") || message.starts_with("top-level keys")
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match parse_str(text) {
        Ok(config) => {
            for l in &config.listeners {
                // hyper asserts a read buffer of at least 8 KiB.
                prop_assert!(l.limits.max_request_header_bytes >= 8192);
                prop_assert!(l.limits.max_request_headers >= 1);
                prop_assert!(l.limits.max_connections >= 1);
                prop_assert!(!l.limits.header_read_timeout.is_zero());
                prop_assert!(l.limits.http2.initial_stream_window_bytes < (1 << 31));
                if let Some(r) = l.limits.min_request_body_rate {
                    prop_assert!(r.bytes_per_second > 0);
                }
            }
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(!e.message.is_empty(), "{e:?}");
                prop_assert!(
                    !e.path.is_empty() || whole_document(&e.message),
                    "error without a path: {e:?}\n{text}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn mutated_configs_never_panic_and_errors_have_paths(
        muts in proptest::collection::vec(mutation(), 1..5)
    ) {
        check_config(&mutate(BASE, &muts))?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check_config(&text)?;
    }

    #[test]
    fn arbitrary_limit_numbers_are_accepted_only_in_range(
        header_bytes in any::<u64>(),
        headers in any::<u32>(),
        window in any::<u64>(),
        rate in any::<u32>(),
    ) {
        let text = format!(
            "listeners: [{{ bind: \"127.0.0.1:0\", limits: {{ max_request_header_bytes: {header_bytes}, max_request_headers: {headers}, min_request_body_rate: {{ bytes_per_second: {rate} }}, http2: {{ initial_connection_window_bytes: {window} }} }} }}]\nupstreams: {{ a: {{ backends: [\"127.0.0.1:1\"] }} }}\nroutes: [{{ name: r, split: [{{ upstream: a, weight: 1 }}] }}]\n"
        );
        check_config(&text)?;
    }
}

// ----- header handling -----

/// Names that matter to framing, routing and forwarding, plus arbitrary ones.
fn header_name() -> impl Strategy<Value = HeaderName> {
    let known = prop_oneof![
        Just("host"),
        Just("content-length"),
        Just("transfer-encoding"),
        Just("connection"),
        Just("keep-alive"),
        Just("proxy-connection"),
        Just("te"),
        Just("trailer"),
        Just("upgrade"),
        Just("x-forwarded-for"),
        Just("x-forwarded-proto"),
        Just("x-forwarded-host"),
        Just("x_user"),
        Just("http2-settings"),
    ]
    .prop_map(HeaderName::from_static);
    let any_name = "[a-z0-9_!#$%&'*+.^`|~-]{1,12}"
        .prop_filter_map("valid name", |s| HeaderName::from_bytes(s.as_bytes()).ok());
    prop_oneof![3 => known, 1 => any_name]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    let known = prop_oneof![
        Just("chunked"),
        Just(" Chunked "),
        Just("5"),
        Just("close"),
        Just("upgrade, x-secret"),
        Just("x-forwarded-for, host"),
        Just("h2c"),
        Just("websocket"),
        Just("a"),
        Just("trailers"),
        Just("a:80"),
        Just("A"),
        Just("user@a"),
    ]
    .prop_map(HeaderValue::from_static);
    let any_value =
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24)
            .prop_filter_map("valid value", |b| HeaderValue::from_bytes(&b).ok());
    prop_oneof![2 => known, 1 => any_value]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, v);
        }
        h
    })
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::HTTP_10),
        Just(Version::HTTP_11),
        Just(Version::HTTP_2)
    ]
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn accepted_heads_are_unambiguous_and_rewritten_cleanly(
        mut h in header_map(),
        v in version(),
        absolute in any::<bool>(),
        underscores in prop_oneof![Just(Underscores::Allow), Just(Underscores::Drop), Just(Underscores::Reject)],
    ) {
        let uri: Uri = if absolute || v == Version::HTTP_2 { "http://a/p".parse().unwrap() } else { "/p".parse().unwrap() };
        let limits = Limits { headers_with_underscores: underscores, ..Limits::default() };
        let Ok(accepted) = validate::check(v, &uri, &h, &limits) else {
            return Ok(());
        };
        let count = |h: &HeaderMap, n: &str| h.get_all(n).iter().count();
        // Framing: one way to read the body, and only one.
        prop_assert!(count(&h, "content-length") <= 1);
        prop_assert!(count(&h, "transfer-encoding") <= 1);
        if let Some(te) = h.get("transfer-encoding") {
            prop_assert!(te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
            prop_assert!(!h.contains_key("content-length"));
            prop_assert_eq!(v, Version::HTTP_11);
        }
        if let Some(cl) = h.get("content-length") {
            prop_assert!(validate::content_length(cl.as_bytes()).is_some());
        }
        // Host: one, agreeing with the target.
        prop_assert!(count(&h, "host") <= 1);
        if let Some(host) = h.get("host") {
            prop_assert!(!host.as_bytes().iter().any(|b| b" @/?#\t".contains(b)), "{host:?}");
        }
        if v == Version::HTTP_11 {
            prop_assert!(h.contains_key("host") || uri.authority().is_some());
        }
        if let (Some(host), Some(a)) = (h.get("host"), uri.authority()) {
            prop_assert!(validate::same_host(host.as_bytes(), a.as_str().as_bytes(), &uri));
        }
        if v == Version::HTTP_2 {
            for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
                prop_assert!(!h.contains_key(name));
            }
        }
        if underscores == Underscores::Reject {
            prop_assert!(h.keys().all(|k| !k.as_str().contains('_')));
        }

        // The rewrite for the backend.
        if accepted.drop_underscored {
            validate::drop_underscored(&mut h);
        }
        let upgrade = headers::is_upgrade_request(v, &h);
        headers::strip_hop_by_hop(&mut h, upgrade);
        let peer = headers::peer_value("192.0.2.7".parse().unwrap());
        headers::add_forwarded(&mut h, &peer, "http", None);
        for name in HOP_BY_HOP {
            let kept_for_upgrade = upgrade && (*name == "connection" || *name == "upgrade");
            prop_assert!(kept_for_upgrade || !h.contains_key(*name), "{name} left in {h:?}");
        }
        if upgrade {
            prop_assert!(h.get("upgrade").is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c")));
        }
        if underscores != Underscores::Allow {
            prop_assert!(h.keys().all(|k| !k.as_str().contains('_')), "{h:?}");
        }
        prop_assert_eq!(count(&h, "x-forwarded-for"), 1);
        let xff = h["x-forwarded-for"].as_bytes();
        prop_assert!(xff == b"192.0.2.7" || xff.ends_with(b", 192.0.2.7"), "{:?}", h["x-forwarded-for"]);
        prop_assert_eq!(&h["x-forwarded-proto"], "http");
    }
}
