//! The cases of the W3C trace-context test suite (`test/test.py`, strict level 2), as pure
//! checks of the parser: what must restart a trace, and what must be kept.

use super::*;

const ID: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

fn tp(v: &str) -> Option<Parent> {
    parse_traceparent(v.as_bytes())
}

fn trace_hex(p: &Parent) -> String {
    p.trace_id.to_string()
}

#[test]
fn a_valid_version_00_value_is_read_whole() {
    let p = tp(&format!("00-{ID}-{PARENT}-01")).unwrap();
    assert_eq!(trace_hex(&p), ID);
    assert_eq!(p.span_id.to_string(), PARENT);
    assert!(p.sampled);
    assert!(!tp(&format!("00-{ID}-{PARENT}-00")).unwrap().sampled);
    // Only the sampled bit counts; other bits are someone else's business.
    assert!(tp(&format!("00-{ID}-{PARENT}-09")).unwrap().sampled);
    assert!(!tp(&format!("00-{ID}-{PARENT}-fe")).unwrap().sampled);
}

#[test]
fn optional_whitespace_around_the_value_is_fine() {
    for v in [
        format!(" 00-{ID}-{PARENT}-01"),
        format!("\t00-{ID}-{PARENT}-01"),
        format!("00-{ID}-{PARENT}-01 "),
        format!("\t 00-{ID}-{PARENT}-01 \t"),
    ] {
        assert!(tp(&v).is_some(), "{v:?}");
    }
}

#[test]
fn anything_malformed_restarts_the_trace() {
    let bad = [
        // Extra characters after the flags of a version 00 value.
        format!("00-{ID}-{PARENT}-01."),
        format!("00-{ID}-{PARENT}-01-what-the-future-will-be-like"),
        // Version ff, illegal, too long or too short.
        format!("ff-{ID}-{PARENT}-01"),
        format!(".0-{ID}-{PARENT}-01"),
        format!("0.-{ID}-{PARENT}-01"),
        format!("000-{ID}-{PARENT}-01"),
        format!("0000-{ID}-{PARENT}-01"),
        format!("0-{ID}-{PARENT}-01"),
        // Trace ids: all zeros, illegal characters, upper case, too long, too short.
        format!("00-00000000000000000000000000000000-{PARENT}-01"),
        format!("00-.2345678901234567890123456789012-{PARENT}-01"),
        format!("00-1234567890123456789012345678901.-{PARENT}-01"),
        format!("00-ABCDEF78901234567890123456789012-{PARENT}-01"),
        format!("00-123456789012345678901234567890123-{PARENT}-01"),
        format!("00-1234567890123456789012345678901-{PARENT}-01"),
        // Parent ids likewise.
        format!("00-{ID}-0000000000000000-01"),
        format!("00-{ID}-.234567890123456-01"),
        format!("00-{ID}-123456789012345.-01"),
        format!("00-{ID}-12345678901234567-01"),
        format!("00-{ID}-123456789012345-01"),
        format!("00-{ID}-ABCDEF7890123456-01"),
        // Flags.
        format!("00-{ID}-{PARENT}-.0"),
        format!("00-{ID}-{PARENT}-0."),
        format!("00-{ID}-{PARENT}-001"),
        format!("00-{ID}-{PARENT}-1"),
        format!("00-{ID}-{PARENT}-0A"),
        // Wrong delimiters, and nothing at all.
        format!("00_{ID}-{PARENT}-01"),
        format!("00-{ID}_{PARENT}-01"),
        String::new(),
    ];
    for v in &bad {
        assert_eq!(tp(v), None, "{v:?} must be refused");
    }
}

#[test]
fn a_higher_version_is_read_as_far_as_version_00_goes() {
    let p = tp(&format!("cc-{ID}-{PARENT}-01")).unwrap();
    assert_eq!(trace_hex(&p), ID);
    assert!(p.sampled);
    let p = tp(&format!("cc-{ID}-{PARENT}-01-what-the-future-will-be-like")).unwrap();
    assert_eq!(trace_hex(&p), ID);
    // Its fields still end at a dash.
    assert_eq!(
        tp(&format!("cc-{ID}-{PARENT}-01.what-the-future-will-be-like")),
        None
    );
    // Shorter than a version 00 value: not parsed.
    assert_eq!(tp(&format!("cc-{ID}-{PARENT}-1")), None);
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn two_traceparent_fields_restart_the_trace() {
    let one = format!("00-{ID}-{PARENT}-01");
    assert!(parent(&headers(&[("traceparent", &one)])).is_some());
    assert!(parent(&headers(&[("TraceParent", &one)])).is_some());
    let other = format!("00-12345678901234567890123456789011-{PARENT}-01");
    assert_eq!(
        parent(&headers(&[("traceparent", &other), ("traceparent", &one)])),
        None
    );
    assert_eq!(parent(&headers(&[("trace-parent", &one)])), None);
}

#[test]
fn written_values_are_version_00_and_read_back() {
    let t = TraceId([0xab; 16]);
    let s = SpanId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
    let v = traceparent(&t, &s, true);
    assert_eq!(
        v.to_str().unwrap(),
        "00-abababababababababababababababab-0123456789abcdef-01"
    );
    let back = parse_traceparent(v.as_bytes()).unwrap();
    assert_eq!((back.trace_id, back.span_id, back.sampled), (t, s, true));
    assert!(
        traceparent(&t, &s, false)
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
}

fn state(fields: &[&str]) -> Option<String> {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|f| ("tracestate", *f)).collect();
    tracestate(&headers(&pairs)).map(|v| v.to_str().unwrap().to_owned())
}

#[test]
fn tracestate_is_kept_in_order_and_joined() {
    assert_eq!(state(&["foo=1,bar=2"]).as_deref(), Some("foo=1,bar=2"));
    assert_eq!(
        state(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).as_deref(),
        Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
    );
    // Empty fields and members are allowed and left out.
    assert_eq!(state(&["foo=1", ""]).as_deref(), Some("foo=1"));
    assert_eq!(state(&["", "foo=1"]).as_deref(), Some("foo=1"));
    assert_eq!(state(&[""]), None);
    assert_eq!(state(&[" , "]), None);
    assert_eq!(state(&[]), None);
    // Optional whitespace around members.
    assert_eq!(
        state(&["foo=1 \t , \t bar=2, \t baz=3", "x=1"]).as_deref(),
        Some("foo=1,bar=2,baz=3,x=1")
    );
    assert!(state(&["\t foo=1 \t"]).is_some());
}

#[test]
fn every_allowed_character_is_allowed() {
    let key: String = ('a'..='z').chain('0'..='9').chain("_-*/".chars()).collect();
    let value: String = (0x20u8..=0x7e)
        .filter(|b| *b != b',' && *b != b'=')
        .map(char::from)
        .collect();
    // The value may not end with a space: it ends with `~` here.
    assert!(state(&[&format!("{key}={value}")]).is_some());
    assert!(state(&[&format!("{key}@a-z0-9_-*/={value}")]).is_some());
}

#[test]
fn an_invalid_tracestate_is_dropped_whole() {
    let bad: &[&[&str]] = &[
        // Duplicated keys, in one field or across two.
        &["foo=1,foo=1"],
        &["foo=1,foo=2"],
        &["foo=1", "foo=1"],
        &["foo=1", "foo=2"],
        // Illegal keys.
        &["foo =1"],
        &["FOO=1"],
        &["foo.bar=1"],
        &["foo@=1,bar=2"],
        &["@foo=1,bar=2"],
        &["foo@@bar=1,bar=2"],
        &["foo@bar@baz=1,bar=2"],
        // Illegal values, and a member without one.
        &["foo=bar=baz"],
        &["foo=,bar=3"],
        &["foo"],
        &["foo=1\t2"],
    ];
    for fields in bad {
        assert_eq!(state(fields), None, "{fields:?} must be dropped");
    }
}

#[test]
fn tracestate_limits_are_the_specs() {
    let members = |n: usize| -> String {
        (1..=n)
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert!(state(&[&members(32)]).is_some());
    assert_eq!(state(&[&members(33)]), None);
    let z256 = format!("{}=1", "z".repeat(256));
    let z257 = format!("{}=1", "z".repeat(257));
    assert!(state(&["foo=1", &z256]).is_some());
    assert_eq!(state(&["foo=1", &z257]), None);
    let tenant_ok = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
    let tenant_long = format!("{}@v=1", "t".repeat(242));
    let system_long = format!("t@{}=1", "v".repeat(15));
    assert!(state(&["foo=1", &tenant_ok]).is_some());
    assert_eq!(state(&["foo=1", &tenant_long]), None);
    assert_eq!(state(&["foo=1", &system_long]), None);
    let v256 = format!("foo={}", "v".repeat(256));
    let v257 = format!("foo={}", "v".repeat(257));
    assert!(state(&[&v256]).is_some());
    assert_eq!(state(&[&v257]), None);
}

#[test]
fn settling_tracestate_in_place_keeps_joins_or_drops() {
    let settled = |fields: &[&str]| {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|f| ("tracestate", *f)).collect();
        let mut h = headers(&pairs);
        settle_tracestate(&mut h);
        h.get_all(&TRACESTATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        settled(&["foo=1, bar=2"]),
        ["foo=1, bar=2"],
        "a valid field stays as it came"
    );
    assert_eq!(settled(&["foo=1", "bar=2"]), ["foo=1,bar=2"]);
    assert!(settled(&["foo=1,foo=2"]).is_empty());
    assert!(settled(&[" , "]).is_empty());
    assert!(settled(&[]).is_empty());
}
