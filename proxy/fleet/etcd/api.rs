//! The calls the fleet makes, typed: ranges, transactions, leases. The gateway's JSON has keys
//! and values in base64 and 64-bit numbers as strings; fields at their zero value are left out
//! (a `succeeded: false`, a lease that expired: `TTL` missing).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Etcd, EtcdError};

/// One key and its value as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is bound to; 0 for none.
    pub lease: i64,
}

/// A range's keys and the store's revision when it was read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Range {
    pub kvs: Vec<Kv>,
    pub count: i64,
    pub revision: i64,
}

/// What a transaction checks before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Compare {
    /// The key's last write was at this revision (0: the key does not exist).
    ModRevision(String, i64),
    /// The key is bound to this lease (false when the key is gone, e.g. its lease expired).
    Lease(String, i64),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The key just after every key starting with `prefix` (etcd's `range_end` for a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A 64-bit number as the gateway writes it (a string; absent at zero).
pub(crate) fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn decode(call: &'static str, v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s).map_err(|e| EtcdError::Decode {
            call,
            why: e.to_string(),
        }),
    }
}

pub(crate) fn kv(call: &'static str, v: &Value) -> Result<Kv, EtcdError> {
    let key = decode(call, &v["key"])?;
    Ok(Kv {
        key: String::from_utf8(key).map_err(|e| EtcdError::Decode {
            call,
            why: e.to_string(),
        })?,
        value: decode(call, &v["value"])?,
        create_revision: num(&v["create_revision"]),
        mod_revision: num(&v["mod_revision"]),
        lease: num(&v["lease"]),
    })
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::ModRevision(key, rev) => json!({
            "key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string(),
        }),
        Compare::Lease(key, lease) => json!({
            "key": b64(key.as_bytes()), "target": "LEASE", "result": "EQUAL", "lease": lease.to_string(),
        }),
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => json!({ "request_put": {
            "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string(),
        }}),
        Op::Delete(key) => json!({ "request_delete_range": { "key": b64(key.as_bytes()) } }),
    }
}

impl Etcd {
    /// Every key starting with `prefix` (`count_only`: just how many).
    pub(crate) async fn range_prefix(
        &self,
        prefix: &str,
        count_only: bool,
    ) -> Result<Range, EtcdError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "count_only": count_only,
        });
        let v = self.call("range", "/kv/range", body).await?;
        let kvs = match v["kvs"].as_array() {
            Some(a) => a.iter().map(|k| kv("range", k)).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Range {
            kvs,
            count: num(&v["count"]),
            revision: num(&v["header"]["revision"]),
        })
    }

    /// Writes `ops` if every compare holds: whether it did, and the store's revision after.
    pub(crate) async fn txn(
        &self,
        compare: &[Compare],
        ops: &[Op],
    ) -> Result<(bool, i64), EtcdError> {
        let body = json!({
            "compare": compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": ops.iter().map(op_json).collect::<Vec<_>>(),
        });
        let v = self.call("txn", "/kv/txn", body).await?;
        Ok((
            v["succeeded"].as_bool().unwrap_or(false),
            num(&v["header"]["revision"]),
        ))
    }

    pub(crate) async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let body =
            json!({ "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string() });
        self.call("put", "/kv/put", body).await.map(drop)
    }

    /// A lease of `ttl` seconds: (its id, the TTL etcd granted).
    pub(crate) async fn lease_grant(&self, ttl: u64) -> Result<(i64, i64), EtcdError> {
        let v = self
            .call(
                "lease_grant",
                "/lease/grant",
                json!({ "TTL": ttl.to_string() }),
            )
            .await?;
        let id = num(&v["ID"]);
        if id == 0 {
            return Err(EtcdError::Decode {
                call: "lease_grant",
                why: format!("no lease id in {v}"),
            });
        }
        Ok((id, num(&v["TTL"])))
    }

    /// Renews a lease; `false` when it has already expired (etcd answers without a TTL).
    pub(crate) async fn lease_keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let v = self
            .call(
                "keepalive",
                "/lease/keepalive",
                json!({ "ID": id.to_string() }),
            )
            .await?;
        Ok(num(&v["result"]["TTL"]) > 0)
    }

    /// Ends a lease at once: every key bound to it goes.
    pub(crate) async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("revoke", "/lease/revoke", json!({ "ID": id.to_string() }))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(prefix_end(""), [0]);
    }

    #[test]
    fn numbers_come_as_strings_or_not_at_all() {
        assert_eq!(num(&json!("4111120378139613711")), 4111120378139613711);
        assert_eq!(num(&json!(7)), 7);
        assert_eq!(num(&Value::Null), 0);
    }

    #[test]
    fn a_key_value_decodes_from_the_gateway() {
        let v = json!({"key":"Zm9v","create_revision":"5","mod_revision":"6","version":"1","value":"YmFy","lease":"9"});
        let k = kv("range", &v).unwrap();
        assert_eq!(
            k,
            Kv {
                key: "foo".into(),
                value: b"bar".to_vec(),
                create_revision: 5,
                mod_revision: 6,
                lease: 9
            }
        );
        assert!(kv("range", &json!({"key": "!!"})).is_err());
    }

    #[test]
    fn a_lease_guarded_write_checks_the_lease_and_the_revision() {
        let c = [
            Compare::Lease("/l".into(), 42),
            Compare::ModRevision("/s".into(), 0),
        ]
        .iter()
        .map(compare_json)
        .collect::<Vec<_>>();
        assert_eq!(c[0]["target"], "LEASE");
        assert_eq!(c[0]["lease"], "42");
        assert_eq!(c[1]["target"], "MOD");
        assert_eq!(c[1]["mod_revision"], "0");
        let op = op_json(&Op::Put {
            key: "/s".into(),
            value: b"{}".to_vec(),
            lease: 0,
        });
        assert_eq!(op["request_put"]["value"], "e30=");
    }
}
