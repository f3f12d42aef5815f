//! The shadow task: sends one copy to the shadow pool (its own pick, breakers and statistics;
//! no retry), within the timeout, then compares its answer with the primary's.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http::header::HeaderName;
use http::request::Parts;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Mirror, compared_headers, is_json};
use crate::backend::InFlight;
use crate::backend::pool::SendError;
use crate::body::{BodyEnd, ReqBody};
use crate::http::classify::{self, Class, Rules, SendFailure};
use crate::http::compare::{self, Answer, Capture, Difference};
use crate::http::grpc::GrpcEnd;
use crate::stats::ShadowResult;
use crate::stats::shadow::MismatchRecord;

/// One copy, start to end; the caller holds its in-flight place until this returns. Every way
/// out counts exactly one result.
pub(super) async fn run(mut m: Mirror, body: Bytes) {
    // `Mirror` counts itself abandoned when dropped open, so its parts are taken, not moved.
    let rt = Arc::clone(&m.rt);
    let head = std::mem::replace(&mut m.head, Request::new(()).into_parts().0);
    let primary = m.primary.take();
    let (_, closed) = oneshot::channel();
    let go = std::mem::replace(&mut m.go, closed);
    drop(m);
    let spec = &rt.spec;
    // Out once the primary's response head is in (or the primary failed): the copy's work then
    // runs while the client's answer is already on its way, not in front of it.
    let _ = tokio::time::timeout(spec.timeout, go).await;
    let record_of = spec.compare.then(|| request_record(&head));
    let now = Instant::now();
    let Some((index, ticket)) = rt.upstream.pick(&|_| false, now) else {
        rt.stats.count(ShadowResult::NoBackend);
        return;
    };
    let backend = &rt.upstream.backends[index];
    let req = Request::from_parts(head, ReqBody::full(body));
    let in_flight = InFlight::start(&backend.state);
    let sent_at = Instant::now();
    let max_body = spec.max_body_bytes;
    let exchange = async {
        let sent = backend
            .pool
            .send(req, false, sent_at)
            .await
            .map_err(|f| (f.error, f.reused))?;
        let ttfb = sent_at.elapsed();
        let (parts, mut incoming) = sent.resp.into_parts();
        // Without a comparison the body is only drained (the connection is reused after it).
        let mut capture = spec.compare.then(|| Capture::new(max_body));
        let mut grpc = GrpcEnd::of_head(&parts.headers);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| (SendError::Exchange(e), false))?;
            if let (Some(c), Some(d)) = (capture.as_mut(), frame.data_ref()) {
                c.push(d);
            }
            if let Some(t) = frame.trailers_ref() {
                grpc.trailers(t);
            }
        }
        let answer = capture.map(|c| Answer {
            status: parts.status.as_u16(),
            headers: compared_headers(&spec.compare_headers, &parts.headers),
            json: is_json(&parts.headers),
            body: c.finish(),
        });
        Ok::<_, (SendError, bool)>((parts.status.as_u16(), grpc, answer, sent.conn, ttfb))
    };
    // A copy is never retried: the classification's retry verdict is not asked for.
    let never = Rules {
        policy: None,
        idempotent: false,
        replayable: false,
        retries: u32::MAX,
        refused_again: u32::MAX,
    };
    let (class, ttfb, answer) = match tokio::time::timeout(spec.timeout, exchange).await {
        Ok(Ok((status, grpc, answer, conn, ttfb))) => {
            backend.pool.checkin(conn, Instant::now());
            // Read to its end: classified as the primary's is when its body ends.
            let failures = rt.upstream.spec.grpc_failures;
            let class = classify::body_ended(status, BodyEnd::Complete, grpc, failures);
            (class, Some(ttfb), answer)
        }
        Ok(Err((error, reused))) => {
            let f = SendFailure {
                error: &error,
                reused,
                unsent: false,
            };
            (classify::failed(&f, &never).class, None, None)
        }
        Err(_) => (classify::timed_out(&never).class, None, None),
    };
    match class.backend_outcome() {
        Some(o) => backend.state.record(o, ticket, ttfb, Instant::now()),
        None => drop(ticket),
    }
    drop(in_flight);
    rt.stats.count(match class {
        Class::Success => ShadowResult::Success,
        Class::ServerError => ShadowResult::ServerError,
        Class::Timeout => ShadowResult::Timeout,
        Class::ConnectFailure
        | Class::SharedConnectFailure
        | Class::Reset
        | Class::Stale
        | Class::Refused
        | Class::Shortage(_)
        | Class::Client => ShadowResult::Failed,
    });

    // The primary may still be streaming to its client: wait for it, as long again at most.
    let (Some(shadow), Some(primary), Some((request, request_headers))) =
        (answer, primary, record_of)
    else {
        return;
    };
    let Ok(Ok(primary)) = tokio::time::timeout(spec.timeout, primary).await else {
        // The primary failed, or its client left before the end: nothing to compare.
        return;
    };
    let Some(diff) = compare::compare(&primary, &shadow, &spec.ignore_fields) else {
        rt.stats.matched();
        return;
    };
    let (difference, header_values) = match &diff {
        Difference::Status => ("status".to_owned(), None),
        Difference::Header(i) => {
            let name = spec.compare_headers.get(*i).map_or("?", HeaderName::as_str);
            let shown = |v: &Option<Vec<u8>>| {
                v.as_ref()
                    .map(|v| redacted(name, &String::from_utf8_lossy(v)))
            };
            (
                name.to_owned(),
                Some((
                    primary.headers.get(*i).and_then(shown),
                    shadow.headers.get(*i).and_then(shown),
                )),
            )
        }
        Difference::JsonPath(p) => (p.clone(), None),
        Difference::Byte(at) => (format!("byte {at}"), None),
        Difference::Digest { after } => (format!("after byte {after} (digest)"), None),
    };
    rt.stats.mismatched(
        diff.kind(),
        MismatchRecord {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            request,
            request_headers,
            kind: diff.kind().as_str(),
            primary_status: primary.status,
            shadow_status: shadow.status,
            difference,
            header_values,
        },
    );
}

/// The request line and headers, as a mismatch record shows them.
fn request_record(head: &Parts) -> (String, Vec<(String, String)>) {
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let headers = head
        .headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes());
            (k.as_str().to_owned(), redacted(k.as_str(), &value))
        })
        .collect();
    (format!("{} {target}", head.method), headers)
}

/// Credentials never leave in a mismatch record.
pub(crate) fn redacted(name: &str, value: &str) -> String {
    const SENSITIVE: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    if SENSITIVE.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        "[redacted]".to_owned()
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redacted("Authorization", "Bearer x"), "[redacted]");
        assert_eq!(redacted("set-cookie", "a=b"), "[redacted]");
        assert_eq!(redacted("x-user-id", "42"), "42");
    }
}
