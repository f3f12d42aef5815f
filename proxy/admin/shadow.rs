//! `GET /shadow/{route}`: what a route's shadow traffic came to, with its last mismatches.

use http::StatusCode;
use serde_json::{Value, json};

use crate::routing::Snapshot;
use crate::routing::shadow::ShadowRuntime;
use crate::stats::{MismatchKind, ShadowResult};

pub fn render(snap: &Snapshot, route: &str) -> (StatusCode, Value) {
    let Some(r) = snap.route(route) else {
        let known: Vec<&str> = snap.routes.iter().map(|r| &*r.spec.name).collect();
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no route `{route}`"), "routes": known }),
        );
    };
    let Some(sh) = &r.shadow else {
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("route `{route}` has no `shadow`") }),
        );
    };
    (StatusCode::OK, view(sh))
}

/// The route's shadow in `/status`: where copies go and how they compare (details at
/// `/shadow/{route}`).
pub fn summary(sh: &ShadowRuntime) -> Value {
    let counts = sh.stats.read();
    let sent: u64 = [
        ShadowResult::Success,
        ShadowResult::ServerError,
        ShadowResult::Timeout,
        ShadowResult::Failed,
    ]
    .iter()
    .map(|r| sh.stats.result(*r))
    .sum();
    json!({
        "upstream": &*sh.spec.upstream,
        "percent": sh.spec.percent,
        "in_flight": sh.in_flight.get(),
        "sent": sent,
        "compared": counts.compared,
        "mismatched": counts.mismatched,
    })
}

fn view(sh: &ShadowRuntime) -> Value {
    let spec = &sh.spec;
    let m = &sh.stats;
    let counts = m.read();
    let requests: serde_json::Map<String, Value> = ShadowResult::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), json!(m.result(*r))))
        .collect();
    let by_kind: serde_json::Map<String, Value> = MismatchKind::ALL
        .iter()
        .map(|k| (k.as_str().to_owned(), json!(m.mismatches(*k))))
        .collect();
    let recent: Vec<Value> = m
        .recent()
        .into_iter()
        .map(|r| {
            let mut v = json!({
                "at_unix_ms": r.at_ms,
                "request": r.request,
                "kind": r.kind,
                "primary_status": r.primary_status,
                "shadow_status": r.shadow_status,
                "difference": r.difference,
                "request_headers": headers_object(&r.request_headers),
            });
            if let Some((p, s)) = r.header_values {
                v["header_values"] = json!({ "primary": p, "shadow": s });
            }
            v
        })
        .collect();
    json!({
        "route": &*sh.route,
        "upstream": &*spec.upstream,
        "percent": spec.percent,
        "sample": spec.sample.as_str(),
        "compare": spec.compare,
        "max_body_bytes": spec.max_body_bytes,
        "max_in_flight": spec.max_in_flight,
        "timeout_ms": spec.timeout.as_millis() as u64,
        "methods": spec.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "compare_headers": spec.compare_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
        "ignore_fields": spec.ignore_fields,
        "in_flight": sh.in_flight.get(),
        "requests": requests,
        "compared": counts.compared,
        "mismatched": counts.mismatched,
        "mismatch_rate": counts.mismatch_rate(),
        "mismatches": by_kind,
        "recent_mismatches": recent,
    })
}

/// Header name -> value; a repeated header's values joined with `, `.
fn headers_object(headers: &[(String, String)]) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in headers {
        match map.get_mut(k) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(v);
            }
            _ => {
                map.insert(k.clone(), json!(v));
            }
        }
    }
    Value::Object(map)
}
