//! Shadow traffic: a copy of a sampled request goes to the route's shadow upstream, in a task
//! of its own that the client's request never waits for.
//!
//! The primary request streams exactly as without shadowing; its body is copied as it goes by
//! (at most `max_body_bytes`, else the copy is dropped and counted). Once the body is whole
//! and the primary's response head is in (so the copy's work never runs in front of the
//! client's answer), the copy is sent, with `x-switchyard-shadow: 1`, within `timeout`, if
//! fewer than `max_in_flight` copies are outstanding, to a backend of the shadow pool picked
//! by its own breakers, whose statistics it feeds; never retried. With `compare`, the primary's response
//! is copied the same way on its way to the client and the two are compared
//! ([`super::compare`]) once both are complete.
//!
//! `routing::shadow` decides which requests are copied (pure); this module copies them on the
//! request path; `task` sends a copy and compares the answers.

mod task;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use tokio::sync::oneshot;

use super::attempt::aim::Aim;
use super::compare::{Answer, Capture};
use super::headers::clone_head;
use crate::body::{BodyTap, ReqBody};
use crate::routing::shadow::ShadowRuntime;
use crate::stats::ShadowResult;

pub(crate) static X_SWITCHYARD_SHADOW: HeaderName = HeaderName::from_static("x-switchyard-shadow");

// ----- the request path -----

/// A request chosen for shadowing, until its body is whole.
#[derive(Debug)]
pub(crate) struct Mirror {
    rt: Arc<ShadowRuntime>,
    head: Parts,
    /// Resolves when the primary's response head is in, or the primary failed.
    go: oneshot::Receiver<()>,
    primary: Option<oneshot::Receiver<Answer>>,
    /// Not counted in any result yet: dropped like this, the copy was abandoned.
    open: bool,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if self.open {
            self.rt.stats.count(ShadowResult::Abandoned);
        }
    }
}

/// The primary's response, on its way to the client, copied for the comparison.
#[derive(Debug)]
pub(crate) struct PrimaryTap {
    /// Fired when the primary's response head is in (dropped unfired when the primary failed):
    /// the copy goes out then, so its work never delays the client's own request.
    go: Option<oneshot::Sender<()>>,
    /// With compare: where the primary's answer goes.
    tx: Option<oneshot::Sender<Answer>>,
    rt: Arc<ShadowRuntime>,
    /// Status and headers, once the head arrived; the body is filled in at the end.
    answer: Option<Answer>,
    capture: Capture,
}

/// Decides whether this request is shadowed; if so, the copy of its head and the tap for the
/// primary's response (boxed: only shadowed requests pay for their room). Costs one atomic add
/// for a request of a route that shadows.
pub(crate) fn start(
    rt: &Arc<ShadowRuntime>,
    aim: &Aim,
    head: &Parts,
    upgrade: bool,
) -> Option<(Box<Mirror>, Box<PrimaryTap>)> {
    let spec = &rt.spec;
    if spec.basis_points == 0 || upgrade {
        return None;
    }
    if !rt.sampled(aim.sticky.as_deref()) {
        return None;
    }
    if !spec.methods.contains(&head.method) {
        rt.stats.count(ShadowResult::SkippedMethod);
        return None;
    }
    // A slow or dead shadow upstream keeps every place taken: skip before copying anything, so
    // that it costs the client's request next to nothing. (The place is taken at send time.)
    if rt.in_flight.get() >= spec.max_in_flight {
        rt.stats.count(ShadowResult::SkippedInFlight);
        return None;
    }
    let mut copy = clone_head(head);
    copy.headers
        .insert(&X_SWITCHYARD_SHADOW, HeaderValue::from_static("1"));
    if let Some(host) = &spec.host {
        copy.headers.insert(header::HOST, host.clone());
    }
    let (go_tx, go) = oneshot::channel();
    let (tx, primary) = if spec.compare {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let tap = PrimaryTap {
        go: Some(go_tx),
        tx,
        rt: Arc::clone(rt),
        answer: None,
        capture: Capture::new(if spec.compare { spec.max_body_bytes } else { 0 }),
    };
    let mirror = Mirror {
        rt: Arc::clone(rt),
        head: copy,
        go,
        primary,
        open: true,
    };
    Some((Box::new(mirror), Box::new(tap)))
}

impl Mirror {
    /// Sends the copy now if the body is already whole (`kept`, or empty); otherwise returns
    /// the body with a tap that sends it when the body ends.
    pub(crate) fn attach(self, body: ReqBody, kept: Option<&Bytes>) -> ReqBody {
        let max = self.rt.spec.max_body_bytes;
        let whole = match (&body, kept) {
            (_, Some(bytes)) => Some(bytes.clone()),
            (ReqBody::Full(b), None) => Some(b.clone().unwrap_or_default()),
            // Nothing more will come (an empty body, or one whose end was already read).
            (b @ (ReqBody::Streaming(_) | ReqBody::Guarded(_)), None)
                if http_body::Body::is_end_stream(b) =>
            {
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
        // Streaming, under the listener's body limits or not: tap it on its way.
        if !matches!(body, ReqBody::Streaming(_) | ReqBody::Guarded(_)) {
            return body;
        }
        let too_big = http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > max as u64);
        if too_big {
            self.close(ShadowResult::SkippedBody);
            return body;
        }
        ReqBody::Tapped {
            body: Box::new(body),
            tap: Some(Box::new(Tap {
                mirror: Some(self),
                copy: Vec::new(),
            })),
        }
    }

    /// Counts the request in `result`: no copy goes out.
    fn close(mut self, result: ShadowResult) {
        self.rt.stats.count(result);
        self.open = false;
    }

    /// Spawns the shadow exchange, if an in-flight place is free.
    fn send(mut self, body: Bytes) {
        let Some(place) = self.rt.in_flight.try_start(self.rt.spec.max_in_flight) else {
            self.close(ShadowResult::SkippedInFlight);
            return;
        };
        // From here the task counts the result, however the exchange goes.
        self.open = false;
        tokio::spawn(async move {
            // Given back however the copy ends.
            let _place = place;
            task::run(self, body).await;
        });
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
    pub(crate) fn begin(&mut self, status: u16, headers: &HeaderMap) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
        if self.tx.is_none() {
            return;
        }
        self.answer = Some(Answer {
            status,
            headers: compared_headers(&self.rt.spec.compare_headers, headers),
            json: is_json(headers),
            body: Capture::new(0).finish(),
        });
    }

    pub(crate) fn data(&mut self, chunk: &[u8]) {
        // Not comparing, or no copy went out after all (skipped, or already over).
        if self.tx.as_ref().is_some_and(|tx| !tx.is_closed()) {
            self.capture.push(chunk);
        }
    }

    /// The primary's body reached the client whole: hand it to the comparison.
    pub(crate) fn finish(self) {
        if let (Some(tx), Some(mut answer)) = (self.tx, self.answer) {
            answer.body = self.capture.finish();
            let _ = tx.send(answer);
        }
    }
}

pub(super) fn compared_headers(names: &[HeaderName], headers: &HeaderMap) -> Vec<Option<Vec<u8>>> {
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

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json"))
    })
}
