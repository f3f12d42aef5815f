//! Whether a shadow's answer matches its primary's: pure functions over what each side captured
//! (status, selected headers, a bounded copy of the body and a digest of all of it).
//!
//! The first difference found decides the kind, in this order: status, then headers, then body.
//! JSON bodies are compared as values (so key order and whitespace do not count, and ignored
//! fields are left out) and the difference is named by its JSON pointer; other bodies are
//! compared byte by byte and the difference is the first differing byte's offset.

use std::hash::{DefaultHasher, Hasher};

use serde_json::Value;

use crate::stats::MismatchKind;

/// A bounded copy of a body as it streams by, with the length and a digest of all of it.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    kept: Vec<u8>,
    limit: usize,
    len: u64,
    digest: DefaultHasher,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Capture {
        Capture {
            kept: Vec::new(),
            limit,
            len: 0,
            digest: DefaultHasher::new(),
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        self.digest.write(chunk);
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    pub(crate) fn finish(self) -> Body {
        Body {
            whole: self.len == self.kept.len() as u64,
            kept: self.kept,
            len: self.len,
            digest: self.digest.finish(),
        }
    }
}

/// A body as captured: `kept` is all of it when `whole`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Body {
    pub(crate) kept: Vec<u8>,
    pub(crate) whole: bool,
    pub(crate) len: u64,
    pub(crate) digest: u64,
}

/// One side's answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// The values of the compared headers, index-aligned with the config's list (several
    /// values joined with `, `), `None` when absent.
    pub(crate) headers: Vec<Option<Vec<u8>>>,
    /// Its `Content-Type` says JSON.
    pub(crate) json: bool,
    pub(crate) body: Body,
}

/// Where the two answers first differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Difference {
    Status,
    /// The index of the header in the compared list.
    Header(usize),
    /// A JSON pointer (`""` for the whole document).
    JsonPath(String),
    /// The offset of the first differing byte (or the shorter body's length).
    Byte(u64),
    /// Bodies larger than the copy kept: their digests differ somewhere after this offset.
    Digest {
        after: u64,
    },
}

impl Difference {
    pub(crate) fn kind(&self) -> MismatchKind {
        match self {
            Difference::Status => MismatchKind::Status,
            Difference::Header(_) => MismatchKind::Header,
            _ => MismatchKind::Body,
        }
    }
}

/// `None` when the answers match.
pub(crate) fn compare(primary: &Answer, shadow: &Answer, ignore: &[String]) -> Option<Difference> {
    if primary.status != shadow.status {
        return Some(Difference::Status);
    }
    if let Some(i) = (0..primary.headers.len().min(shadow.headers.len()))
        .find(|&i| primary.headers[i] != shadow.headers[i])
    {
        return Some(Difference::Header(i));
    }
    body(primary, shadow, ignore)
}

fn body(p: &Answer, s: &Answer, ignore: &[String]) -> Option<Difference> {
    let (a, b) = (&p.body, &s.body);
    if !(a.whole && b.whole) {
        if a.len == b.len && a.digest == b.digest {
            return None;
        }
        let n = a.kept.len().min(b.kept.len());
        return Some(match first_byte_difference(&a.kept[..n], &b.kept[..n]) {
            Some(at) => Difference::Byte(at),
            None => Difference::Digest { after: n as u64 },
        });
    }
    if (p.json || s.json || looks_like_json(&a.kept) || looks_like_json(&b.kept))
        && let (Ok(mut x), Ok(mut y)) = (
            serde_json::from_slice::<Value>(&a.kept),
            serde_json::from_slice::<Value>(&b.kept),
        )
    {
        for pointer in ignore {
            remove(&mut x, pointer);
            remove(&mut y, pointer);
        }
        let mut path = String::new();
        return json_difference(&x, &y, &mut path).then_some(Difference::JsonPath(path));
    }
    first_byte_difference(&a.kept, &b.kept).map(Difference::Byte)
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// The offset of the first differing byte; the shorter length if one is a prefix of the other.
pub(crate) fn first_byte_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i as u64),
        None if a.len() != b.len() => Some(a.len().min(b.len()) as u64),
        None => None,
    }
}

/// Leaves out the field a JSON pointer names (an array element becomes `null`, so that the
/// elements after it keep their indexes).
fn remove(v: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let token = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&token);
        }
        Some(Value::Array(items)) => {
            if let Some(item) = token.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = Value::Null;
            }
        }
        _ => {}
    }
}

/// True if the values differ; `path` is then the JSON pointer of the first difference (keys in
/// sorted order, array elements in order).
fn json_difference(a: &Value, b: &Value, path: &mut String) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) if !json_difference(v, w, path) => path.truncate(len),
                    _ => return true,
                }
            }
            false
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                match (x.get(i), y.get(i)) {
                    (Some(v), Some(w)) if !json_difference(v, w, path) => path.truncate(len),
                    _ => return true,
                }
            }
            false
        }
        // 1 and 1.0 are the same number to a JSON reader.
        (Value::Number(x), Value::Number(y)) => x != y && x.as_f64() != y.as_f64(),
        _ => a != b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        let mut c = Capture::new(1024);
        c.push(body.as_bytes());
        Answer {
            status,
            headers: vec![Some(b"application/json".to_vec())],
            json: true,
            body: c.finish(),
        }
    }

    fn diff(a: &str, b: &str, ignore: &[&str]) -> Option<Difference> {
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        compare(&answer(200, a), &answer(200, b), &ignore)
    }

    #[test]
    fn json_is_compared_as_values() {
        assert_eq!(
            diff(r#"{"a":1,"b":[1,2]}"#, r#"{ "b": [1, 2], "a": 1.0 }"#, &[]),
            None
        );
        assert_eq!(
            diff(r#"{"a":{"x":1,"y":2}}"#, r#"{"a":{"x":1,"y":3}}"#, &[]),
            Some(Difference::JsonPath("/a/y".into()))
        );
        assert_eq!(
            diff(
                r#"{"items":[{"id":1},{"id":2}]}"#,
                r#"{"items":[{"id":1}]}"#,
                &[]
            ),
            Some(Difference::JsonPath("/items/1".into()))
        );
        assert_eq!(
            diff(r#"{"a/b":1}"#, r#"{"a/b":2}"#, &[]),
            Some(Difference::JsonPath("/a~1b".into()))
        );
        assert_eq!(
            diff(r#"{"a":1}"#, r#"{"a":1,"new":true}"#, &[]),
            Some(Difference::JsonPath("/new".into()))
        );
        assert_eq!(
            diff("[1]", r#"{"a":1}"#, &[]),
            Some(Difference::JsonPath("".into()))
        );
    }

    #[test]
    fn ignored_fields_do_not_count() {
        let a = r#"{"id":7,"timestamp":"10:00","meta":{"request_id":"x"},"list":[1,"t1",3]}"#;
        let b = r#"{"id":7,"timestamp":"10:01","meta":{"request_id":"y"},"list":[1,"t2",3]}"#;
        assert_eq!(
            diff(a, b, &["/timestamp", "/meta/request_id", "/list/1"]),
            None
        );
        assert_eq!(
            diff(a, b, &["/timestamp"]),
            Some(Difference::JsonPath("/list/1".into()))
        );
        assert_eq!(
            diff(a, b, &["/nope", "/id/x"]).map(|d| d.kind()),
            Some(MismatchKind::Body)
        );
    }

    #[test]
    fn status_then_headers_then_body() {
        let a = answer(200, "{}");
        let mut b = answer(503, "{\"x\":1}");
        assert_eq!(compare(&a, &b, &[]), Some(Difference::Status));
        b.status = 200;
        b.headers = vec![Some(b"text/html".to_vec())];
        assert_eq!(compare(&a, &b, &[]), Some(Difference::Header(0)));
        b.headers = a.headers.clone();
        assert_eq!(
            compare(&a, &b, &[]).map(|d| d.kind()),
            Some(MismatchKind::Body)
        );
        b.headers = vec![None];
        assert_eq!(compare(&a, &b, &[]), Some(Difference::Header(0)));
    }

    #[test]
    fn other_bodies_name_the_first_differing_byte() {
        let text = |s: &str| {
            let mut a = answer(200, s);
            a.json = false;
            a
        };
        assert_eq!(compare(&text("hello"), &text("hello"), &[]), None);
        assert_eq!(
            compare(&text("hello"), &text("help!"), &[]),
            Some(Difference::Byte(3))
        );
        assert_eq!(
            compare(&text("hello"), &text("hello world"), &[]),
            Some(Difference::Byte(5))
        );
        // Not JSON after all: compared as bytes.
        assert_eq!(
            compare(&text("{oops"), &text("{oops!"), &[]),
            Some(Difference::Byte(5))
        );
    }

    #[test]
    fn bodies_over_the_copy_limit_are_compared_by_digest() {
        let big = |tail: &[u8]| {
            let mut c = Capture::new(4);
            c.push(b"abcdefgh");
            c.push(tail);
            Answer {
                status: 200,
                headers: vec![],
                json: false,
                body: c.finish(),
            }
        };
        assert!(!big(b"x").body.whole);
        assert_eq!(big(b"x").body.kept, b"abcd");
        assert_eq!(compare(&big(b"x"), &big(b"x"), &[]), None);
        assert_eq!(
            compare(&big(b"x"), &big(b"y"), &[]),
            Some(Difference::Digest { after: 4 })
        );
    }
}
