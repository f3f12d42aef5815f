//! Switchyard's own answers: a status, a short plain-text body that names the cause (never a
//! backend address), and `x-switchyard-error` for machines. Each carries the request's record
//! to its end like a backend's response does.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::exchange::{Exchange, ProxyBody};
use super::grpc;
use super::record::Record;
use crate::error::{ErrorKind, ProxyError};
use crate::routing::Snapshot;

/// The one place a [`ProxyError`] becomes a response.
pub(crate) fn error(
    snap: Option<Arc<Snapshot>>,
    mut record: Box<Record>,
    e: &ProxyError,
) -> Response<ProxyBody> {
    record.answered_locally(e.kind(), e.status().as_u16());
    if record.grpc {
        let code = grpc::code_for(e.status().as_u16(), e.kind() == ErrorKind::Timeout);
        return grpc_answer(
            snap,
            record,
            e.status(),
            code,
            e.kind().as_str(),
            e.context(),
        );
    }
    answer(snap, record, e.status(), e.kind().as_str(), e.context())
}

/// Switchyard's own answer to a gRPC request: HTTP 200, trailers-only, the status and message
/// in `grpc-status` and `grpc-message` (what gRPC clients read; an HTTP 502 would reach the
/// application as a bare UNKNOWN or INTERNAL). The record keeps the HTTP `status` it stands for.
fn grpc_answer(
    snap: Option<Arc<Snapshot>>,
    mut record: Box<Record>,
    status: StatusCode,
    code: u8,
    token: &'static str,
    text: &str,
) -> Response<ProxyBody> {
    record.status = status.as_u16();
    count(snap.as_deref(), &record);
    let mut resp = Response::new(ProxyBody::full(
        bytes::Bytes::new(),
        Some(Exchange::local(snap, record)),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(m) = HeaderValue::from_str(&grpc::message(text)) {
        h.insert("grpc-message", m);
    }
    h.insert("x-switchyard-error", HeaderValue::from_static(token));
    resp
}

/// A local answer with its `x-switchyard-error` token; the record says why (its flags and
/// error are set by the caller).
pub(crate) fn answer(
    snap: Option<Arc<Snapshot>>,
    mut record: Box<Record>,
    status: StatusCode,
    token: &'static str,
    text: &str,
) -> Response<ProxyBody> {
    if record.grpc {
        let code = grpc::code_for(status.as_u16(), false);
        return grpc_answer(snap, record, status, code, token, text);
    }
    record.status = status.as_u16();
    count(snap.as_deref(), &record);
    let body = format!(
        "{} {}: {text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ProxyBody::full(body, Some(Exchange::local(snap, record))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-switchyard-error", HeaderValue::from_static(token));
    // The rest of the request may be unread or unreadable: the connection cannot go on.
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `switchyard_requests_total` for a routed request answered here: under the backend it was
/// charged to, or under none ("") when no backend was picked.
fn count(snap: Option<&Snapshot>, record: &Record) {
    let (Some(snap), Some(r), Some(t)) = (snap, record.route, record.target) else {
        return;
    };
    let target = &snap.routes[r].targets[t];
    match record.backend.and_then(|b| target.counters.get(b)) {
        Some(c) => c.record(record.status),
        None => target.unassigned.record(record.status),
    }
}
