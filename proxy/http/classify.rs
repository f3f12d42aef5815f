//! The one classification of a try. However a try ends (a response head, an error before one,
//! time running out, then the end of the response body), it is classified here, once, into a
//! [`Class`] (what it came to, and whether that counts against the backend) and a [`Retry`]
//! (whether and why it may go again). The breaker and the backend's statistics, the route's
//! numbers that rollouts gate on, retries, shadow copies and the per-request record all read
//! that one verdict; nothing else looks at raw statuses or errors.
//!
//! Pure functions: no clock, no I/O.

use std::error::Error as StdError;

use http::Method;

use super::grpc::GrpcEnd;
use crate::backend::pool::SendError;
use crate::body::limits::BodyLimitError;
use crate::body::{BodyEnd, ClientBodyError};
use crate::config::model::{GrpcCodes, RetryPolicy};
use crate::error::{ErrorKind, ProxyError};
use crate::stats::Outcome;
use crate::stats::counters::Shortage;

/// Other backends tried after a connect failure when the route has no retry policy: a dead
/// backend must not cost requests it never saw (as NGINX's `proxy_next_upstream` by default).
pub(crate) const IMPLICIT_CONNECT_RETRIES: u32 = 2;

/// Times a request is sent again, on yet another new connection to the same backend, after a
/// connection opened for it refused it unprocessed too. Such a refusal is a race (the new
/// connection was shared at once, and the backend's GOAWAY for its own per-connection limit or
/// shutdown excluded this stream) or a backend that refuses everything (draining, or
/// overloaded and answering `REFUSED_STREAM`). A race rarely strikes twice, so one more new
/// connection almost always takes the request, and two cover a burst of them; against a
/// backend that refuses everything no number helps, so it stops there and the request moves
/// on as one never sent (another backend, or the refusal as the answer). These resends are
/// not retries: nothing was processed, so they spend neither the retry budget nor `attempts`;
/// the route's deadline still bounds them.
pub(crate) const REFUSED_AGAIN_RESENDS: u32 = 2;

/// What one try came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The backend answered below 500 (a 4xx is the client's business, not a failure).
    Success,
    /// The backend answered 5xx.
    ServerError,
    /// No response head within the try's time.
    Timeout,
    /// No connection: refused, unreachable, timed out, or its TLS handshake failed.
    ConnectFailure,
    /// The HTTP/2 connection this try waited for (another try was opening it) failed to open:
    /// that try's [`Class::ConnectFailure`] is the backend's one failure; this one moves on
    /// like a connect failure without counting against the backend again.
    SharedConnectFailure,
    /// The connection broke before the response head, or in the middle of the body.
    Reset,
    /// A kept-alive connection the backend had already closed (as servers do when they reach
    /// their own idle timeout or request limit): the backend did nothing wrong.
    Stale,
    /// An HTTP/2 backend refused the request before processing it (GOAWAY, REFUSED_STREAM):
    /// the backend did nothing wrong and nothing of the request was acted on.
    Refused,
    /// The proxy's own shortage of descriptors, buffers or memory: says nothing about the
    /// backend.
    Shortage(Shortage),
    /// The client's doing: its body was malformed, too large or too slow, or it went away.
    Client,
}

impl Class {
    /// What the backend's breaker and statistics record; `None`: nothing (the ticket is
    /// handed back unused).
    pub(crate) fn backend_outcome(self) -> Option<Outcome> {
        match self {
            Class::Success => Some(Outcome::Success),
            Class::ServerError => Some(Outcome::ServerError),
            Class::Timeout => Some(Outcome::Timeout),
            Class::ConnectFailure => Some(Outcome::ConnectFailure),
            Class::Reset => Some(Outcome::Reset),
            Class::SharedConnectFailure
            | Class::Stale
            | Class::Refused
            | Class::Shortage(_)
            | Class::Client => None,
        }
    }
}

/// Why a failed try may go again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// It may not.
    No,
    /// To another backend (or the same one if no other is left), as the route's `retries`
    /// allow (their budget and the deadline permitting), or, for a request that never reached
    /// a backend, as switchyard does without a policy.
    Another(Failure),
    /// The same request to the same backend on a fresh connection: the kept-alive one was
    /// closed under it. Safe because the backend cannot have acted on it (it came back
    /// unsent) or because the method is idempotent and the request can be built again.
    Fresh,
}

/// What went wrong, as a retry policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Nothing reached the backend: safe to send again whatever the method.
    Connect,
    Reset,
    Timeout,
    Status(u16),
    /// A gRPC status that says the backend failed, in the head of a trailers-only response.
    Grpc(u8),
}

/// A classified try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) class: Class,
    pub(crate) retry: Retry,
}

/// What the retry rules need to know about the request and its tries so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) policy: Option<&'a RetryPolicy>,
    /// The method may be received twice (RFC 9110 9.2.2).
    pub(crate) idempotent: bool,
    /// The request can be built again: its body is empty or was kept whole.
    pub(crate) replayable: bool,
    /// Retries made so far (fresh-connection resends are not retries).
    pub(crate) retries: u32,
    /// Resends after a connection opened for the request refused it (see
    /// [`REFUSED_AGAIN_RESENDS`]).
    pub(crate) refused_again: u32,
}

impl Rules<'_> {
    /// Whether the route's policy retries `f`, before its budget and the deadline are asked.
    /// `unsent`: the request came back untouched.
    fn policy_retries(&self, f: Failure, unsent: bool) -> bool {
        let Some(p) = self.policy else {
            // Without a policy, only a request that never reached any backend goes elsewhere.
            return f == Failure::Connect && unsent && self.retries < IMPLICIT_CONNECT_RETRIES;
        };
        if self.retries >= p.attempts {
            return false;
        }
        match f {
            Failure::Connect => p.on.connect_failure && (unsent || self.replayable),
            // Every gRPC call is a POST: listing a gRPC status is the route's word that its
            // calls may be sent again (as Envoy's `retry_on`).
            Failure::Grpc(code) => self.replayable && p.on.grpc.contains(code),
            _ if !self.replayable || !self.idempotent => false,
            Failure::Reset => p.on.reset,
            Failure::Timeout => p.on.timeout,
            Failure::Status(code) => p.on.statuses.contains(&code),
        }
    }

    fn verdict(&self, class: Class, f: Failure, unsent: bool) -> Verdict {
        let retry = if self.policy_retries(f, unsent) {
            Retry::Another(f)
        } else {
            Retry::No
        };
        Verdict { class, retry }
    }
}

/// Methods a server must be able to receive twice (RFC 9110 9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A response head arrived with `status`; `grpc` is what it says of a gRPC status, and
/// `failures` the statuses that mean the answering upstream failed. A gRPC failure in the head
/// (a trailers-only response) may be retried; one in the trailers cannot be (the client has
/// the head by then) and is classified when the body ends.
pub(crate) fn answered(
    status: u16,
    grpc: GrpcEnd,
    failures: GrpcCodes,
    rules: &Rules<'_>,
) -> Verdict {
    if status >= 500 {
        return rules.verdict(Class::ServerError, Failure::Status(status), false);
    }
    match grpc {
        GrpcEnd::Status(code) if failures.contains(code) => {
            rules.verdict(Class::ServerError, Failure::Grpc(code), false)
        }
        _ => Verdict {
            class: Class::Success,
            retry: Retry::No,
        },
    }
}

/// No response head within the try's time.
pub(crate) fn timed_out(rules: &Rules<'_>) -> Verdict {
    rules.verdict(Class::Timeout, Failure::Timeout, false)
}

/// How an exchange that produced no response head failed.
#[derive(Debug)]
pub(crate) struct SendFailure<'e> {
    pub(crate) error: &'e SendError,
    /// The connection had carried earlier requests.
    pub(crate) reused: bool,
    /// The request came back untouched: nothing of it reached the backend.
    pub(crate) unsent: bool,
}

/// An exchange failed before a response head.
pub(crate) fn failed(f: &SendFailure<'_>, rules: &Rules<'_>) -> Verdict {
    let no = |class| Verdict {
        class,
        retry: Retry::No,
    };
    match cause(f.error) {
        Cause::Client => no(Class::Client),
        Cause::Shortage(s) => no(Class::Shortage(s)),
        Cause::Connect => rules.verdict(Class::ConnectFailure, Failure::Connect, f.unsent),
        Cause::SharedConnect => {
            rules.verdict(Class::SharedConnectFailure, Failure::Connect, f.unsent)
        }
        // Unprocessed (RFC 9113 8.7): safe to send again whatever the method, if it can be.
        Cause::Refused => {
            let again = f.unsent || rules.replayable;
            if !again {
                no(Class::Refused)
            } else if f.reused || rules.refused_again < REFUSED_AGAIN_RESENDS {
                Verdict {
                    class: Class::Refused,
                    retry: Retry::Fresh,
                }
            } else {
                // New connections keep refusing it: elsewhere, as a request never sent.
                rules.verdict(Class::Refused, Failure::Connect, true)
            }
        }
        Cause::Closed if f.reused => {
            let safe = f.unsent || (rules.idempotent && rules.replayable);
            Verdict {
                class: Class::Stale,
                retry: if safe { Retry::Fresh } else { Retry::No },
            }
        }
        Cause::Closed | Cause::Broken => rules.verdict(Class::Reset, Failure::Reset, f.unsent),
    }
}

/// How a response body ended, for a try whose head said `status` and whose gRPC status (if
/// any) is `grpc` by then, to an upstream for which `failures` are failures: the try's final
/// class.
pub(crate) fn body_ended(status: u16, end: BodyEnd, grpc: GrpcEnd, failures: GrpcCodes) -> Class {
    match (end, grpc) {
        (BodyEnd::UpstreamError, _) => Class::Reset,
        // A client that leaves says nothing about the backend: its status still does.
        _ if status >= 500 => Class::ServerError,
        (_, GrpcEnd::Status(code)) if failures.contains(code) => Class::ServerError,
        // A gRPC response that ended without a status broke the protocol (clients see
        // UNKNOWN or INTERNAL).
        (BodyEnd::Complete, GrpcEnd::Pending) => Class::ServerError,
        _ => Class::Success,
    }
}

/// What a request switchyard answered itself counts as in its route's numbers (what rollouts
/// gate on): an upstream's failure, a 5xx no backend could avoid, or nothing (the client's
/// doing, or the proxy's own shortage). `error` is `None` for an injected fault's answer,
/// which counts as the upstream's own `status` would.
pub(crate) fn local_answer(error: Option<ErrorKind>, status: u16) -> Option<Outcome> {
    let Some(kind) = error else {
        return Some(Outcome::from_status(status));
    };
    match kind {
        ErrorKind::Connect => Some(Outcome::ConnectFailure),
        ErrorKind::Timeout => Some(Outcome::Timeout),
        ErrorKind::Reset => Some(Outcome::Reset),
        ErrorKind::NoBackend | ErrorKind::Internal => Some(Outcome::ServerError),
        ErrorKind::LocalResource
        | ErrorKind::BadRequest
        | ErrorKind::ClientGone
        | ErrorKind::NoRoute
        | ErrorKind::BodyTooLarge
        | ErrorKind::BodyTooSlow => None,
    }
}

/// The error a client is answered with when a try's failure is final.
pub(crate) fn error(f: &SendFailure<'_>, class: Class, upstream: &str, addr: &str) -> ProxyError {
    let (kind, why) = match class {
        Class::Client => return client_error(f.error),
        Class::Shortage(s) => (
            ErrorKind::LocalResource,
            format!(
                "switchyard is out of {} and cannot reach upstream `{upstream}` now",
                match s {
                    Shortage::ProcessFiles | Shortage::SystemFiles => "file descriptors",
                    Shortage::Buffers => "socket buffers",
                    Shortage::Memory => "memory",
                }
            ),
        ),
        Class::ConnectFailure | Class::SharedConnectFailure => (
            ErrorKind::Connect,
            format!("cannot connect to upstream `{upstream}`"),
        ),
        Class::Refused => (
            ErrorKind::Connect,
            format!(
                "upstream `{upstream}` refused the request unprocessed (HTTP/2 GOAWAY or REFUSED_STREAM)"
            ),
        ),
        _ => (
            ErrorKind::Reset,
            format!("upstream `{upstream}` closed the connection without a valid response"),
        ),
    };
    ProxyError::new(kind, why).with_detail(addr)
}

/// Why an exchange failed, read off the error's chain.
enum Cause {
    /// The client's body broke or broke a limit on its way through.
    Client,
    /// The proxy could not get a descriptor, buffer or memory for the connection.
    Shortage(Shortage),
    /// No connection could be made.
    Connect,
    /// The connection this request waited for could not be made.
    SharedConnect,
    /// An HTTP/2 backend refused the stream unprocessed.
    Refused,
    /// The connection was closed or reset before any of a response arrived.
    Closed,
    /// Anything else: a broken or invalid response.
    Broken,
}

fn cause(e: &SendError) -> Cause {
    if let Some(h) = e.hyper()
        && (find_in_chain::<BodyLimitError>(h).is_some()
            || find_in_chain::<ClientBodyError>(h).is_some())
    {
        return Cause::Client;
    }
    if let SendError::Connect(io) | SendError::SharedConnect(io) = e {
        if let Some(s) = Shortage::of(io) {
            return Cause::Shortage(s);
        }
        return match e {
            SendError::SharedConnect(_) => Cause::SharedConnect,
            _ => Cause::Connect,
        };
    }
    if e.is_connect() {
        return Cause::Connect;
    }
    if matches!(e, SendError::Refused(_)) {
        return Cause::Refused;
    }
    let Some(h) = e.hyper() else {
        return Cause::Broken;
    };
    let closed = h.is_incomplete_message()
        || h.is_canceled()
        || find_in_chain::<std::io::Error>(h).is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
        });
    if closed { Cause::Closed } else { Cause::Broken }
}

/// The client's own failure, as its answer says it (the backend is not named).
fn client_error(e: &SendError) -> ProxyError {
    let Some(h) = e.hyper() else {
        return ProxyError::new(ErrorKind::Internal, "the request failed");
    };
    if let Some(limit) = find_in_chain::<BodyLimitError>(h) {
        return limit.to_proxy_error();
    }
    let framing = find_in_chain::<ClientBodyError>(h).is_some_and(|client| {
        !client.0.is_incomplete_message()
            && find_in_chain::<std::io::Error>(&client.0).is_none_or(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            })
    });
    if framing {
        ProxyError::new(ErrorKind::BadRequest, "the request body is malformed")
    } else {
        ProxyError::new(
            ErrorKind::ClientGone,
            "the client stopped sending the request body",
        )
    }
}

fn find_in_chain<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RetryOn;

    const D: GrpcCodes = GrpcCodes::DEFAULT_FAILURES;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                timeout: false,
                statuses: vec![502, 503],
                grpc: GrpcCodes::EMPTY,
            },
            budget_percent: 20.0,
            min_per_second: 3,
            per_try_timeout: None,
        }
    }

    fn rules(
        p: Option<&RetryPolicy>,
        idempotent: bool,
        replayable: bool,
        retries: u32,
    ) -> Rules<'_> {
        Rules {
            policy: p,
            idempotent,
            replayable,
            retries,
            refused_again: 0,
        }
    }

    fn refused() -> SendError {
        SendError::Refused(Box::new(std::io::Error::other("REFUSED_STREAM")))
    }

    fn io(kind: std::io::ErrorKind) -> SendError {
        SendError::Connect(std::io::Error::from(kind))
    }

    #[test]
    fn only_safe_requests_are_replayed() {
        let p = policy();
        let get = rules(Some(&p), true, true, 0);
        assert_eq!(
            answered(503, GrpcEnd::NotGrpc, D, &get).retry,
            Retry::Another(Failure::Status(503))
        );
        assert_eq!(
            answered(503, GrpcEnd::NotGrpc, D, &get).class,
            Class::ServerError
        );
        let post = rules(Some(&p), false, true, 0);
        assert_eq!(
            answered(503, GrpcEnd::NotGrpc, D, &post).retry,
            Retry::No,
            "not idempotent"
        );
        let streamed = rules(Some(&p), true, false, 0);
        assert_eq!(
            answered(503, GrpcEnd::NotGrpc, D, &streamed).retry,
            Retry::No,
            "body not kept"
        );
        assert_eq!(
            answered(500, GrpcEnd::NotGrpc, D, &get).retry,
            Retry::No,
            "not listed"
        );
        assert_eq!(timed_out(&get).retry, Retry::No, "not listed");
        let spent = rules(Some(&p), true, true, 2);
        assert_eq!(
            answered(503, GrpcEnd::NotGrpc, D, &spent).retry,
            Retry::No,
            "attempts used up"
        );
        assert_eq!(
            answered(404, GrpcEnd::NotGrpc, D, &get),
            Verdict {
                class: Class::Success,
                retry: Retry::No
            }
        );
    }

    #[test]
    fn a_request_that_never_left_goes_elsewhere_with_or_without_a_policy() {
        let refused = io(std::io::ErrorKind::ConnectionRefused);
        let unsent = SendFailure {
            error: &refused,
            reused: false,
            unsent: true,
        };
        let p = policy();
        let post = rules(Some(&p), false, false, 0);
        assert_eq!(
            failed(&unsent, &post).retry,
            Retry::Another(Failure::Connect)
        );
        let none = rules(None, false, false, 0);
        let v = failed(&unsent, &none);
        assert_eq!(
            v,
            Verdict {
                class: Class::ConnectFailure,
                retry: Retry::Another(Failure::Connect)
            }
        );
        let tried_twice = rules(None, false, false, IMPLICIT_CONNECT_RETRIES);
        assert_eq!(failed(&unsent, &tried_twice).retry, Retry::No);
        assert_eq!(v.class.backend_outcome(), Some(Outcome::ConnectFailure));
    }

    #[test]
    fn the_proxys_own_shortage_never_counts_against_the_backend() {
        for errno in [24, 23, 105, 12] {
            let e = SendError::Connect(std::io::Error::from_raw_os_error(errno));
            let f = SendFailure {
                error: &e,
                reused: false,
                unsent: true,
            };
            let v = failed(&f, &rules(Some(&policy()), true, true, 0));
            assert!(matches!(v.class, Class::Shortage(_)), "errno {errno}");
            assert_eq!(v.retry, Retry::No, "another backend would not help");
            assert_eq!(v.class.backend_outcome(), None);
            assert_eq!(error(&f, v.class, "u", "a").status(), 503);
        }
    }

    /// Refused unprocessed by an HTTP/2 backend: a POST whose body was kept goes again on a
    /// fresh connection, and the backend is not blamed.
    #[test]
    fn a_request_refused_unprocessed_goes_again() {
        let f = SendFailure {
            error: &refused(),
            reused: true,
            unsent: false,
        };
        let v = failed(&f, &rules(None, false, true, 0));
        assert_eq!(v.class, Class::Refused);
        assert_eq!(v.retry, Retry::Fresh);
        assert_eq!(v.class.backend_outcome(), None);
        let streamed = failed(&f, &rules(None, false, false, 0));
        assert_eq!(streamed.retry, Retry::No, "its body is gone");
    }

    /// Requests that waited for a connection whose open failed move on as the opener does,
    /// but only the opener's try counts against the backend: one failure per failed open.
    #[test]
    fn a_shared_open_failure_moves_on_without_counting_again() {
        let timed_out = |shared: bool| {
            let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
            if shared {
                SendError::SharedConnect(io)
            } else {
                SendError::Connect(io)
            }
        };
        let (opener, waiter) = (timed_out(false), timed_out(true));
        let f = |error| SendFailure {
            error,
            reused: false,
            unsent: true,
        };
        for p in [None, Some(&policy())] {
            let r = rules(p, false, false, 0);
            let (o, w) = (failed(&f(&opener), &r), failed(&f(&waiter), &r));
            assert_eq!(o.retry, Retry::Another(Failure::Connect));
            assert_eq!(w.retry, o.retry, "moves on the same way");
            assert_eq!(o.class.backend_outcome(), Some(Outcome::ConnectFailure));
            assert_eq!(w.class, Class::SharedConnectFailure);
            assert_eq!(
                w.class.backend_outcome(),
                None,
                "counted once, by the opener"
            );
            assert_eq!(error(&f(&waiter), w.class, "u", "a").status(), 502);
        }
        let shortage = SendError::SharedConnect(std::io::Error::from_raw_os_error(24));
        assert!(matches!(
            failed(&f(&shortage), &rules(None, true, true, 0)).class,
            Class::Shortage(_)
        ));
    }

    /// A request refused unprocessed goes again on a new connection to the same backend (not
    /// a retry), also when a connection opened for it refused it, a bounded number of times;
    /// then elsewhere as a request never sent.
    #[test]
    fn a_request_refused_on_a_new_connection_is_resent_a_bounded_number_of_times() {
        let refused = refused();
        let on = |reused| SendFailure {
            error: &refused,
            reused,
            unsent: false,
        };
        let mut r = rules(None, false, true, 0);
        assert_eq!(failed(&on(true), &r).retry, Retry::Fresh);
        for again in 0..REFUSED_AGAIN_RESENDS {
            r.refused_again = again;
            let v = failed(&on(false), &r);
            assert_eq!(v.retry, Retry::Fresh, "resend {again}");
            assert_eq!(v.class.backend_outcome(), None);
        }
        r.refused_again = REFUSED_AGAIN_RESENDS;
        let v = failed(&on(false), &r);
        assert_eq!(v.retry, Retry::Another(Failure::Connect), "then elsewhere");
        assert_eq!(v.class, Class::Refused);
        assert_eq!(
            failed(&on(true), &r).retry,
            Retry::Fresh,
            "a kept-alive connection's refusal always gets its new connection"
        );
        let streamed = rules(None, false, false, 0);
        assert_eq!(failed(&on(false), &streamed).retry, Retry::No, "body gone");
    }

    #[test]
    fn body_ends_finish_the_class() {
        let plain = GrpcEnd::NotGrpc;
        assert_eq!(body_ended(200, BodyEnd::Complete, plain, D), Class::Success);
        assert_eq!(body_ended(200, BodyEnd::Dropped, plain, D), Class::Success);
        assert_eq!(
            body_ended(503, BodyEnd::Complete, plain, D),
            Class::ServerError
        );
        assert_eq!(
            body_ended(200, BodyEnd::UpstreamError, plain, D),
            Class::Reset
        );
        assert_eq!(Class::Client.backend_outcome(), None);
        assert_eq!(Class::Stale.backend_outcome(), None);
    }

    #[test]
    fn a_grpc_status_decides_the_class_where_it_arrives() {
        let p = RetryPolicy {
            on: RetryOn {
                grpc: GrpcCodes::EMPTY.with(14),
                ..policy().on
            },
            ..policy()
        };
        let post = rules(Some(&p), false, true, 0);
        let unary = rules(Some(&p), true, true, 0);
        // Trailers-only UNAVAILABLE: a failure, retried when the request may go again.
        let v = answered(200, GrpcEnd::Status(14), D, &unary);
        assert_eq!(v.class, Class::ServerError);
        assert_eq!(v.retry, Retry::Another(Failure::Grpc(14)));
        let streamed = rules(Some(&p), false, false, 0);
        assert_eq!(
            answered(200, GrpcEnd::Status(14), D, &post).retry,
            Retry::Another(Failure::Grpc(14)),
            "listed: the route's word"
        );
        assert_eq!(
            answered(200, GrpcEnd::Status(14), D, &streamed).retry,
            Retry::No,
            "body not kept"
        );
        assert_eq!(
            answered(200, GrpcEnd::Status(13), D, &unary).retry,
            Retry::No,
            "not listed"
        );
        // NOT_FOUND is the caller's business.
        assert_eq!(
            answered(200, GrpcEnd::Status(5), D, &unary).class,
            Class::Success
        );
        // In the trailers: decided when the body ends.
        assert_eq!(
            answered(200, GrpcEnd::Pending, D, &unary).class,
            Class::Success
        );
        let ended = |g| body_ended(200, BodyEnd::Complete, g, D);
        assert_eq!(ended(GrpcEnd::Status(14)), Class::ServerError);
        assert_eq!(ended(GrpcEnd::Status(4)), Class::ServerError);
        assert_eq!(ended(GrpcEnd::Status(5)), Class::Success);
        assert_eq!(ended(GrpcEnd::Status(0)), Class::Success);
        assert_eq!(
            ended(GrpcEnd::Pending),
            Class::ServerError,
            "no status at all"
        );
        assert_eq!(
            body_ended(200, BodyEnd::Dropped, GrpcEnd::Pending, D),
            Class::Success,
            "the client left"
        );
    }

    /// An upstream's own `grpc_failures` decide like the default five, in the head and in the
    /// trailers, and only they make a listed retry condition fire.
    #[test]
    fn an_upstreams_listed_grpc_status_fails_like_the_default_five() {
        let p = RetryPolicy {
            on: RetryOn {
                grpc: GrpcCodes::EMPTY.with(8),
                ..policy().on
            },
            ..policy()
        };
        let unary = rules(Some(&p), true, true, 0);
        let listed = D.with(8);
        let v = answered(200, GrpcEnd::Status(8), listed, &unary);
        assert_eq!(v.class, Class::ServerError);
        assert_eq!(v.retry, Retry::Another(Failure::Grpc(8)));
        assert_eq!(
            answered(200, GrpcEnd::Status(8), D, &unary),
            Verdict {
                class: Class::Success,
                retry: Retry::No
            },
            "not listed: the caller's business"
        );
        let end = |failures| body_ended(200, BodyEnd::Complete, GrpcEnd::Status(8), failures);
        assert_eq!(end(listed), Class::ServerError);
        assert_eq!(end(D), Class::Success);
        assert_eq!(
            body_ended(200, BodyEnd::Complete, GrpcEnd::Status(14), listed),
            Class::ServerError,
            "the default five stay"
        );
    }

    #[test]
    fn local_answers_count_for_the_upstream_only_when_it_failed() {
        assert_eq!(
            local_answer(Some(ErrorKind::Connect), 502),
            Some(Outcome::ConnectFailure)
        );
        assert_eq!(
            local_answer(Some(ErrorKind::NoBackend), 503),
            Some(Outcome::ServerError)
        );
        assert_eq!(local_answer(Some(ErrorKind::LocalResource), 503), None);
        assert_eq!(local_answer(Some(ErrorKind::ClientGone), 499), None);
        assert_eq!(
            local_answer(None, 503),
            Some(Outcome::ServerError),
            "an injected abort"
        );
    }
}
