//! One request, one record. A [`Record`] starts when a request arrives, collects one
//! [`TryRecord`] per try and the [`Flags`] that say why switchyard itself answered or changed
//! the outcome, and is finished exactly once, when the response has been sent or abandoned
//! (`exchange::Exchange::finish`): the one place a request is counted. An access log line and
//! the request's server span are written from the finished record; each try record carries
//! what a client span needs (which backend, when, how long, what came of it).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Version};
use tokio::time::Instant;

use super::classify::Class;
use crate::accesslog::{Entry, ListenerLog};
use crate::error::ErrorKind;
use crate::routing::BackendRef;
use crate::trace::{RequestTrace, SpanId, TraceIds};

/// Why switchyard answered itself or changed a request's outcome (Envoy's response flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    /// `UF`: a backend refused or did not take the connection.
    pub(crate) const UPSTREAM_CONNECT_FAILURE: Flags = Flags(1);
    /// `UT`: a backend did not answer in time.
    pub(crate) const UPSTREAM_TIMEOUT: Flags = Flags(1 << 1);
    /// `UH`: no backend could take the request (all unhealthy or their breakers open).
    pub(crate) const NO_HEALTHY_UPSTREAM: Flags = Flags(1 << 2);
    /// `UR`: a backend closed or reset the connection.
    pub(crate) const UPSTREAM_RESET: Flags = Flags(1 << 3);
    /// `RL`: the route's rate limit answered 429.
    pub(crate) const RATE_LIMITED: Flags = Flags(1 << 4);
    /// `FI`: an injected fault answered.
    pub(crate) const FAULT_ABORT: Flags = Flags(1 << 5);
    /// `DI`: an injected delay held the request.
    pub(crate) const FAULT_DELAY: Flags = Flags(1 << 6);
    /// `DC`: the client went away before the response was sent.
    pub(crate) const DOWNSTREAM_DISCONNECT: Flags = Flags(1 << 7);
    /// `RT`: the request was sent more than once (a retry or a fresh-connection resend).
    pub(crate) const RETRIED: Flags = Flags(1 << 8);
    /// `SH`: a copy went to the route's shadow.
    pub(crate) const SHADOWED: Flags = Flags(1 << 9);
    /// `LR`: a listener limit refused the request (malformed, too large, too slow).
    pub(crate) const LIMIT_REJECTED: Flags = Flags(1 << 10);
    /// `NR`: no route matched.
    pub(crate) const NO_ROUTE: Flags = Flags(1 << 11);
    /// `LE`: switchyard was out of file descriptors, buffers or memory.
    pub(crate) const LOCAL_RESOURCES: Flags = Flags(1 << 12);

    /// Every flag with its short name, in the order a log line lists them.
    pub(crate) const ALL: [(Flags, &'static str); 13] = [
        (Flags::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Flags::UPSTREAM_TIMEOUT, "UT"),
        (Flags::NO_HEALTHY_UPSTREAM, "UH"),
        (Flags::UPSTREAM_RESET, "UR"),
        (Flags::RATE_LIMITED, "RL"),
        (Flags::FAULT_ABORT, "FI"),
        (Flags::FAULT_DELAY, "DI"),
        (Flags::DOWNSTREAM_DISCONNECT, "DC"),
        (Flags::RETRIED, "RT"),
        (Flags::SHADOWED, "SH"),
        (Flags::LIMIT_REJECTED, "LR"),
        (Flags::NO_ROUTE, "NR"),
        (Flags::LOCAL_RESOURCES, "LE"),
    ];

    /// The short name of each bit, bit `i` first: `ALL`'s names in order (checked in a test).
    pub(crate) const NAMES: [&'static str; 13] = [
        "UF", "UT", "UH", "UR", "RL", "FI", "DI", "DC", "RT", "SH", "LR", "NR", "LE",
    ];

    pub(crate) fn bits(self) -> u16 {
        self.0
    }

    pub(crate) fn set(&mut self, f: Flags) {
        self.0 |= f.0;
    }

    pub(crate) fn has(self, f: Flags) -> bool {
        self.0 & f.0 == f.0
    }

    /// The short names of the flags set, in [`Flags::ALL`] order.
    pub(crate) fn names(self) -> impl Iterator<Item = &'static str> {
        Flags::ALL
            .into_iter()
            .filter(move |(f, _)| self.has(*f))
            .map(|(_, name)| name)
    }

    /// The flag a failed try raises.
    pub(crate) fn of_class(class: Class) -> Flags {
        match class {
            Class::Success | Class::ServerError | Class::Client => Flags::default(),
            Class::Timeout => Flags::UPSTREAM_TIMEOUT,
            Class::ConnectFailure => Flags::UPSTREAM_CONNECT_FAILURE,
            Class::Reset | Class::Stale | Class::Refused => Flags::UPSTREAM_RESET,
            Class::Shortage(_) => Flags::LOCAL_RESOURCES,
        }
    }

    /// The flag a local answer raises.
    pub(crate) fn of_error(kind: ErrorKind) -> Flags {
        match kind {
            ErrorKind::NoRoute => Flags::NO_ROUTE,
            ErrorKind::NoBackend => Flags::NO_HEALTHY_UPSTREAM,
            ErrorKind::Connect => Flags::UPSTREAM_CONNECT_FAILURE,
            ErrorKind::Timeout => Flags::UPSTREAM_TIMEOUT,
            ErrorKind::Reset => Flags::UPSTREAM_RESET,
            ErrorKind::ClientGone => Flags::DOWNSTREAM_DISCONNECT,
            ErrorKind::BadRequest | ErrorKind::BodyTooLarge | ErrorKind::BodyTooSlow => {
                Flags::LIMIT_REJECTED
            }
            ErrorKind::LocalResource => Flags::LOCAL_RESOURCES,
            ErrorKind::Internal => Flags::default(),
        }
    }
}

impl std::fmt::Display for Flags {
    /// `UF,RT`, or `-` when none is set (as Envoy prints them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut any = false;
        for name in self.names() {
            if any {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            any = true;
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// One try at a backend: what a client span is written from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TryRecord {
    pub(crate) backend: BackendRef,
    /// When the try was sent.
    pub(crate) sent: Instant,
    /// Time to the response head, when one came.
    pub(crate) ttfb: Option<Duration>,
    /// What the try came to; for an answered try, final once its body ended.
    pub(crate) class: Class,
    /// The response head's status, when one came.
    pub(crate) status: Option<u16>,
    /// The HTTP version the response head came in, when one came.
    pub(crate) version: Option<http::Version>,
    /// Sent again on a fresh connection after this one turned out closed.
    pub(crate) resent: bool,
    /// The try's own span in the request's trace (its `traceparent` named it as the
    /// backend's parent); `None` when trace context is off.
    pub(crate) span: Option<SpanId>,
}

/// A request's access log line under way (`access::begin` starts it, `access::finish` sends
/// it): the listener's log and the entry, filled as the request goes.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) log: Arc<ListenerLog>,
    pub(crate) entry: Box<Entry>,
}

/// One request, start to end.
#[derive(Debug)]
pub(crate) struct Record {
    /// When the request arrived.
    pub(crate) started: Instant,
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// The route's index in the request's snapshot, once one matched.
    pub(crate) route: Option<usize>,
    /// The target the split picked (before any reroute).
    pub(crate) aimed: Option<usize>,
    /// The target whose numbers the request counts in: the last try's, or the aimed one's
    /// when no backend could be tried.
    pub(crate) target: Option<usize>,
    /// The backend of that target the response is counted for; `None` when none was picked.
    pub(crate) backend: Option<usize>,
    /// Every try but the last, oldest first (empty unless the request was tried again).
    pub(crate) earlier: Vec<TryRecord>,
    pub(crate) last: Option<TryRecord>,
    /// The status the client was answered with.
    pub(crate) status: u16,
    /// What switchyard answered with itself, when it did.
    pub(crate) error: Option<ErrorKind>,
    pub(crate) flags: Flags,
    /// Response body bytes sent to the client.
    pub(crate) bytes_sent: u64,
    /// Time from arrival to the end of the response, once finished.
    pub(crate) duration: Duration,
    /// The request's access log line, when its listener logs.
    pub(crate) access: Option<Pending>,
    /// The request's place in its trace, from when it was routed by a snapshot (`None` before
    /// that, and when `tracing.propagate` is off). Read its ids with [`Record::trace_ids`].
    pub(crate) trace: Option<RequestTrace>,
    /// A gRPC request: switchyard's own answers to it are gRPC statuses.
    pub(crate) grpc: bool,
}

impl Record {
    /// Boxed: a record travels from the request's arrival through every layer of the request
    /// path into its response body, which hyper moves several times; inline, each of those
    /// moves would copy all of it.
    pub(crate) fn start(started: Instant, method: Method, version: Version) -> Box<Record> {
        Box::new(Record {
            started,
            method,
            version,
            route: None,
            aimed: None,
            target: None,
            backend: None,
            earlier: Vec::new(),
            last: None,
            status: 0,
            error: None,
            flags: Flags::default(),
            bytes_sent: 0,
            duration: Duration::ZERO,
            access: None,
            trace: None,
            grpc: false,
        })
    }

    /// The request's trace id and switchyard's span id for it (the server span's): what the
    /// access log line carries, and what the exported server span is named by.
    pub(crate) fn trace_ids(&self) -> Option<TraceIds> {
        self.trace.as_ref().map(RequestTrace::ids)
    }

    /// A try went out.
    pub(crate) fn tried(&mut self, t: TryRecord) {
        if let Some(prev) = self.last.replace(t) {
            self.earlier.push(prev);
            self.flags.set(Flags::RETRIED);
        }
        self.charge(t.backend.target(), Some(t.backend.index()));
    }

    /// Counts the request against `target` (and `backend` of it, when one was picked).
    pub(crate) fn charge(&mut self, target: usize, backend: Option<usize>) {
        self.target = Some(target);
        self.backend = backend;
    }

    /// The last try, to be finished as its response ends.
    pub(crate) fn last_try(&mut self) -> Option<&mut TryRecord> {
        self.last.as_mut()
    }

    /// Tries made, the last included.
    pub(crate) fn attempts(&self) -> usize {
        self.earlier.len() + usize::from(self.last.is_some())
    }

    /// Time to the last try's response head (the access log's upstream time).
    pub(crate) fn upstream_time(&self) -> Option<Duration> {
        self.last.and_then(|t| t.ttfb)
    }

    /// Switchyard answers itself with `kind`.
    pub(crate) fn answered_locally(&mut self, kind: ErrorKind, status: u16) {
        self.error = Some(kind);
        self.status = status;
        self.flags.set(Flags::of_error(kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_themselves_in_order() {
        let mut f = Flags::default();
        f.set(Flags::RETRIED);
        f.set(Flags::UPSTREAM_CONNECT_FAILURE);
        assert_eq!(f.names().collect::<Vec<_>>(), ["UF", "RT"]);
        assert_eq!(f.to_string(), "UF,RT");
        assert_eq!(Flags::default().to_string(), "-");
        assert!(f.has(Flags::RETRIED) && !f.has(Flags::SHADOWED));
        for (i, (flag, name)) in Flags::ALL.iter().enumerate() {
            assert_eq!(flag.0, 1 << i);
            assert_eq!(Flags::NAMES[i], *name);
        }
        let distinct: std::collections::HashSet<u16> =
            Flags::ALL.iter().map(|(f, _)| f.0).collect();
        assert_eq!(distinct.len(), Flags::ALL.len());
    }

    #[test]
    fn a_second_try_marks_the_request_retried() {
        let mut r = Record::start(Instant::now(), Method::GET, Version::HTTP_11);
        let t = TryRecord {
            backend: BackendRef::new(0, 1),
            sent: Instant::now(),
            ttfb: None,
            class: Class::ConnectFailure,
            status: None,
            version: None,
            resent: false,
            span: None,
        };
        r.tried(t);
        assert!(!r.flags.has(Flags::RETRIED));
        r.tried(TryRecord {
            backend: BackendRef::new(1, 0),
            class: Class::Success,
            ..t
        });
        assert!(r.flags.has(Flags::RETRIED));
        assert_eq!(r.attempts(), 2);
        assert_eq!(r.target, Some(1));
    }
}
