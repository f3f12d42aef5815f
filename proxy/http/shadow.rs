//! Shadow traffic: a copy of a sampled request goes to the route's shadow upstream, in a task
//! of its own that the client's request never waits for.
//!
//! The primary request streams exactly as without shadowing; its body is copied as it goes by
//! (at most `max_body_bytes`, else the copy is dropped and counted). Only once the body is
//! whole is the copy sent, with `x-switchyard-shadow: 1`, within `timeout`, if fewer than
//! `max_in_flight` copies are outstanding, to a backend of the shadow pool picked by its own
//! breakers, whose statistics it feeds; never retried. With `compare`, the primary's response
//! is copied the same way on its way to the client and the two are compared
//! ([`super::compare`]) once both are complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::choose::{self, Aim};
use super::compare::{self, Answer, Capture, Difference};
use super::forward::clone_head;
use crate::backend::InFlight;
use crate::body::{BodyTap, ReqBody};
use crate::config::model::{Sample, Shadow};
use crate::reload::snapshot::Pool;
use crate::stats::mirror::MismatchRecord;
use crate::stats::{MirrorStats, Outcome, ShadowResult, ShadowStats, StatsRegistry};

pub static X_SWITCHYARD_SHADOW: HeaderName = HeaderName::from_static("x-switchyard-shadow");

/// A route's shadow, as one snapshot serves it.
pub struct ShadowRuntime {
    pub route: Arc<str>,
    pub spec: Shadow,
    pub pool: Arc<Pool>,
    /// The mismatch rate rollouts gate on.
    pub stats: Arc<ShadowStats>,
    pub mirror: Arc<MirrorStats>,
    seq: AtomicU64,
}

impl ShadowRuntime {
    pub fn new(
        route: &Arc<str>,
        spec: &Shadow,
        pool: &Arc<Pool>,
        shadow_stats: &Arc<ShadowStats>,
        registry: &mut StatsRegistry,
    ) -> Arc<ShadowRuntime> {
        Arc::new(ShadowRuntime {
            route: Arc::clone(route),
            spec: spec.clone(),
            pool: Arc::clone(pool),
            stats: Arc::clone(shadow_stats),
            mirror: registry.mirror(route, &spec.upstream),
            seq: AtomicU64::new(0),
        })
    }
}

impl std::fmt::Debug for ShadowRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowRuntime")
            .field("route", &self.route)
            .field("upstream", &self.spec.upstream)
            .finish()
    }
}

// ----- sampling: pure -----

/// frac(√2) in 64-bit fixed point: consecutive multiples spread evenly over [0, 1) (a Weyl
/// sequence), and independently of the split's golden-ratio sequence, so the requests shadowed
/// are not tied to the upstream the split chose.
const SPREAD: u64 = 0x6A09_E667_F3BC_C909;

/// Whether the `seq`-th request of a route is shadowed at `basis_points` (hundredths of a
/// percent). Over any run of consecutive requests the share is within a few requests of exact.
pub fn spread_sampled(seq: u64, basis_points: u32) -> bool {
    ((u128::from(seq.wrapping_mul(SPREAD)) * 10_000) >> 64) < u128::from(basis_points)
}

/// Whether a sticky key is shadowed: the same key always gets the same answer, and raising the
/// percent only adds keys.
pub fn sticky_sampled(key: &[u8], basis_points: u32) -> bool {
    // FNV-1a from a basis of its own (not the split's hash), then splitmix64's finalizer.
    let mut h: u64 = 0x9ae1_6a3b_2f90_404f;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % 10_000 < u64::from(basis_points)
}

// ----- the request path -----

/// A request chosen for shadowing, until its body is whole.
#[derive(Debug)]
pub struct Mirror {
    rt: Arc<ShadowRuntime>,
    head: Parts,
    primary: Option<oneshot::Receiver<Answer>>,
    /// Not counted in any result yet: dropped like this, the copy was abandoned.
    open: bool,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if self.open {
            self.rt.mirror.count(ShadowResult::Abandoned);
        }
    }
}

/// The primary's response, on its way to the client, copied for the comparison.
#[derive(Debug)]
pub struct PrimaryTap {
    tx: oneshot::Sender<Answer>,
    rt: Arc<ShadowRuntime>,
    /// Status and headers, once the head arrived; the body is filled in at the end.
    answer: Option<Answer>,
    capture: Capture,
}

/// Decides whether this request is shadowed; if so, the copy of its head (and, with compare,
/// the tap for the primary's response). Costs one atomic add for a route that shadows.
pub fn start(
    rt: &Arc<ShadowRuntime>,
    aim: &Aim,
    head: &Parts,
    upgrade: bool,
) -> Option<(Mirror, Option<PrimaryTap>)> {
    let spec = &rt.spec;
    if spec.basis_points == 0 || upgrade {
        return None;
    }
    let sampled = match (spec.sample, &aim.sticky) {
        (Sample::Sticky, Some(key)) => sticky_sampled(key, spec.basis_points),
        // Without a key (the client sent none), requests are spread like `random`.
        _ => spread_sampled(rt.seq.fetch_add(1, Ordering::Relaxed), spec.basis_points),
    };
    if !sampled {
        return None;
    }
    if !spec.methods.contains(&head.method) {
        rt.mirror.count(ShadowResult::SkippedMethod);
        return None;
    }
    let mut copy = clone_head(head);
    copy.headers
        .insert(&X_SWITCHYARD_SHADOW, HeaderValue::from_static("1"));
    if let Some(host) = &spec.host {
        copy.headers.insert(header::HOST, host.clone());
    }
    let (tap, primary) = if spec.compare {
        let (tx, rx) = oneshot::channel();
        let tap = PrimaryTap {
            tx,
            rt: Arc::clone(rt),
            answer: None,
            capture: Capture::new(spec.max_body_bytes),
        };
        (Some(tap), Some(rx))
    } else {
        (None, None)
    };
    let mirror = Mirror {
        rt: Arc::clone(rt),
        head: copy,
        primary,
        open: true,
    };
    Some((mirror, tap))
}

impl Mirror {
    /// Sends the copy now if the body is already whole (`kept`, or empty); otherwise returns
    /// the body with a tap that sends it when the body ends.
    pub fn attach(self, body: ReqBody, kept: Option<&Bytes>) -> ReqBody {
        let max = self.rt.spec.max_body_bytes;
        let whole = match (&body, kept) {
            (_, Some(bytes)) => Some(bytes.clone()),
            (ReqBody::Full(b), None) => Some(b.clone().unwrap_or_default()),
            (ReqBody::Streaming(b), None) if http_body::Body::is_end_stream(b) => {
                Some(Bytes::new())
            }
            _ => None,
        };
        if let Some(bytes) = whole {
            if bytes.len() > max {
                self.close(ShadowResult::SkippedBody);
            } else {
                self.send(bytes);
            }
            return body;
        }
        match body {
            ReqBody::Streaming(incoming) => {
                let too_big = http_body::Body::size_hint(&incoming)
                    .exact()
                    .is_some_and(|n| n > max as u64);
                if too_big {
                    self.close(ShadowResult::SkippedBody);
                    return ReqBody::Streaming(incoming);
                }
                ReqBody::Tapped {
                    body: incoming,
                    tap: Some(Box::new(Tap {
                        mirror: Some(self),
                        copy: Vec::new(),
                    })),
                }
            }
            other => other,
        }
    }

    /// Counts the request in `result`: no copy goes out.
    fn close(mut self, result: ShadowResult) {
        self.rt.mirror.count(result);
        self.open = false;
    }

    /// Spawns the shadow exchange, if an in-flight place is free.
    fn send(mut self, body: Bytes) {
        let rt = &self.rt;
        if !rt.mirror.try_start(rt.spec.max_in_flight) {
            self.close(ShadowResult::SkippedInFlight);
            return;
        }
        // From here the task counts the result, however the exchange goes.
        self.open = false;
        let place = Place(Arc::clone(&rt.mirror));
        tokio::spawn(async move {
            let _place = place;
            run(self, body).await;
        });
    }
}

/// An in-flight place, given back however the shadow task ends.
struct Place(Arc<MirrorStats>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Copies the request body as it streams to the primary.
#[derive(Debug)]
struct Tap {
    /// `None` once the copy was given up (too large) or sent.
    mirror: Option<Mirror>,
    copy: Vec<u8>,
}

impl BodyTap for Tap {
    fn data(&mut self, chunk: &Bytes) {
        let Some(m) = &self.mirror else { return };
        if self.copy.len() + chunk.len() > m.rt.spec.max_body_bytes {
            if let Some(m) = self.mirror.take() {
                m.close(ShadowResult::SkippedBody);
            }
            self.copy = Vec::new();
            return;
        }
        self.copy.extend_from_slice(chunk);
    }

    fn end(mut self: Box<Self>) {
        if let Some(m) = self.mirror.take() {
            m.send(Bytes::from(std::mem::take(&mut self.copy)));
        }
    }
}

impl PrimaryTap {
    /// The primary's response head arrived.
    pub fn begin(&mut self, status: u16, headers: &HeaderMap) {
        self.answer = Some(Answer {
            status,
            headers: compared_headers(&self.rt.spec.compare_headers, headers),
            json: is_json(headers),
            body: Capture::new(0).finish(),
        });
    }

    pub fn data(&mut self, chunk: &[u8]) {
        // No copy went out after all (skipped, or already over): nothing will compare this.
        if !self.tx.is_closed() {
            self.capture.push(chunk);
        }
    }

    /// The primary's body reached the client whole: hand it to the comparison.
    pub fn finish(self) {
        if let Some(mut answer) = self.answer {
            answer.body = self.capture.finish();
            let _ = self.tx.send(answer);
        }
    }
}

fn compared_headers(names: &[HeaderName], headers: &HeaderMap) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|n| {
            let mut values = headers.get_all(n).iter();
            let first = values.next()?;
            let mut joined = first.as_bytes().to_vec();
            for v in values {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(v.as_bytes());
            }
            Some(joined)
        })
        .collect()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json"))
    })
}

// ----- the shadow task -----

async fn run(mut m: Mirror, body: Bytes) {
    let rt = Arc::clone(&m.rt);
    let head = std::mem::replace(&mut m.head, Request::new(()).into_parts().0);
    let primary = m.primary.take();
    drop(m);
    let spec = &rt.spec;
    let record_of = spec.compare.then(|| request_record(&head));
    let now = Instant::now();
    let Some((index, ticket)) = choose::pick_in(&rt.pool, &|_| false, now) else {
        rt.mirror.count(ShadowResult::NoBackend);
        return;
    };
    let backend = &rt.pool.backends[index];
    let req = Request::from_parts(head, ReqBody::full(body));
    let in_flight = InFlight::start(&backend.state);
    let sent_at = Instant::now();
    let max_body = spec.max_body_bytes;
    let exchange = async {
        let (resp, conn) = backend.pool.send(req).await.map_err(|f| f.error)?;
        let ttfb = sent_at.elapsed();
        let (parts, mut incoming) = resp.into_parts();
        let mut capture = Capture::new(max_body);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(crate::backend::pool::SendError::Exchange)?;
            if let Some(d) = frame.data_ref() {
                capture.push(d);
            }
        }
        let answer = Answer {
            status: parts.status.as_u16(),
            headers: compared_headers(&spec.compare_headers, &parts.headers),
            json: is_json(&parts.headers),
            body: capture.finish(),
        };
        Ok::<_, crate::backend::pool::SendError>((answer, conn, ttfb))
    };
    let (outcome, ttfb, answer) = match tokio::time::timeout(spec.timeout, exchange).await {
        Ok(Ok((answer, conn, ttfb))) => {
            backend.pool.checkin(conn);
            (
                Outcome::from_status(answer.status),
                Some(ttfb),
                Some(answer),
            )
        }
        Ok(Err(e)) if e.is_connect() => (Outcome::ConnectFailure, None, None),
        Ok(Err(_)) => (Outcome::Reset, None, None),
        Err(_) => (Outcome::Timeout, None, None),
    };
    if let Some(t) = backend.state.record(outcome, ticket, ttfb, Instant::now()) {
        choose::log_transition(&backend.state, &t);
    }
    drop(in_flight);
    rt.mirror.count(match outcome {
        Outcome::Success => ShadowResult::Success,
        Outcome::ServerError => ShadowResult::ServerError,
        Outcome::Timeout => ShadowResult::Timeout,
        Outcome::ConnectFailure | Outcome::Reset => ShadowResult::Failed,
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
    let diff = compare::compare(&primary, &shadow, &spec.ignore_fields);
    rt.stats.record(diff.is_some());
    let Some(diff) = diff else { return };
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
    rt.mirror.mismatch(
        diff.kind().index(),
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
pub fn redacted(name: &str, value: &str) -> String {
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
    fn spread_sampling_holds_its_percent_over_any_run() {
        for percent in [1u32, 10, 25, 33, 50, 90, 99] {
            for start in [0u64, 1, 12_345, u64::MAX - 2_500] {
                let n = (0..5_000u64)
                    .filter(|i| spread_sampled(start.wrapping_add(*i), percent * 100))
                    .count();
                let share = n as f64 / 50.0;
                assert!(
                    (share - f64::from(percent)).abs() <= 2.0,
                    "{percent}% from {start}: {share}%"
                );
            }
        }
        assert!((0..1000).all(|i| !spread_sampled(i, 0)));
        assert!((0..1000).all(|i| spread_sampled(i, 10_000)));
    }

    #[test]
    fn sticky_sampling_holds_per_user_and_overall() {
        for percent in [5u32, 20, 50] {
            let n = (0..5_000)
                .filter(|i| sticky_sampled(format!("user-{i}").as_bytes(), percent * 100))
                .count();
            let share = n as f64 / 50.0;
            assert!(
                (share - f64::from(percent)).abs() <= 2.0,
                "{percent}%: {share}%"
            );
        }
        // The same user always gets the same answer; a higher percent keeps everyone in.
        for i in 0..500 {
            let key = format!("u{i}");
            let at10 = sticky_sampled(key.as_bytes(), 1_000);
            assert_eq!(at10, sticky_sampled(key.as_bytes(), 1_000));
            assert!(!at10 || sticky_sampled(key.as_bytes(), 2_000));
        }
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redacted("Authorization", "Bearer x"), "[redacted]");
        assert_eq!(redacted("set-cookie", "a=b"), "[redacted]");
        assert_eq!(redacted("x-user-id", "42"), "42");
    }
}
