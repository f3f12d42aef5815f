//! The `rate_limit` and `fault` of a route in `/status`: what is in force and what it did, so
//! an operator sees at a glance that a rehearsal fault is still switched on.

use serde_json::{Value, json};

use crate::config::model::RateKey;
use crate::routing::RouteRuntime;

pub fn rate_limit(r: &RouteRuntime) -> Value {
    let (Some(spec), Some(limit)) = (&r.spec.rate_limit, &r.rate_limit) else {
        return Value::Null;
    };
    let key = match &spec.key {
        RateKey::Route => "route".to_owned(),
        RateKey::ClientIp => "client_ip".to_owned(),
        RateKey::Header(h) => format!("header:{h}"),
    };
    json!({
        "requests_per_second": spec.requests_per_second,
        "burst": spec.burst,
        "key": key,
        "max_keys": spec.max_keys,
        "buckets": limit.state().keys(),
        "limited": limit.counts().read(),
        "evicted_before_full": limit.state().evicted_before_full(),
    })
}

pub fn fault(r: &RouteRuntime) -> Value {
    let (Some(spec), Some(fault)) = (&r.spec.fault, &r.fault) else {
        return Value::Null;
    };
    let injected: serde_json::Map<String, Value> = r
        .targets
        .iter()
        .zip(fault.counts())
        .filter_map(|(t, c)| {
            let (delayed, aborted) = c?.read();
            Some((
                t.upstream.spec.name.to_string(),
                json!({ "delay": delayed, "abort": aborted }),
            ))
        })
        .collect();
    json!({
        "upstream": spec.upstream.as_deref(),
        "delay": spec.delay.as_ref().map(|d| json!({ "percent": d.percent, "duration_ms": d.duration.as_millis() as u64 })),
        "abort": spec.abort.as_ref().map(|a| json!({ "percent": a.percent, "status": a.status })),
        "injected": injected,
    })
}
