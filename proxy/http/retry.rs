//! When a failed try may be tried again: pure decisions over the route's retry policy.

use http::Method;

use crate::config::model::RetryPolicy;
use crate::error::{ErrorKind, ProxyError};

/// What went wrong with a try, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing reached the backend: safe to replay whatever the method.
    Connect,
    Reset,
    Timeout,
    Status(u16),
}

impl Failure {
    pub fn of_error(e: &ProxyError) -> Option<Failure> {
        match e.kind() {
            ErrorKind::Connect => Some(Failure::Connect),
            ErrorKind::Reset => Some(Failure::Reset),
            ErrorKind::Timeout => Some(Failure::Timeout),
            _ => None,
        }
    }
}

/// Methods a server must be able to receive twice (RFC 9110 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether the policy retries this failure at all (before budget and time are considered).
/// `retries_done` counts the retries already made; `replayable` says whether the request can be
/// sent again (its body is empty or was kept whole, or it came back unsent).
pub fn wants_retry(
    policy: &RetryPolicy,
    failure: Failure,
    method: &Method,
    replayable: bool,
    retries_done: u32,
) -> bool {
    if retries_done >= policy.attempts {
        return false;
    }
    match failure {
        // The request never left: given back untouched, it goes again whatever the method.
        Failure::Connect => policy.on.connect_failure && replayable,
        _ if !replayable || !is_idempotent(method) => false,
        Failure::Reset => policy.on.reset,
        Failure::Timeout => policy.on.timeout,
        Failure::Status(code) => policy.on.statuses.contains(&code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RetryOn;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                timeout: false,
                statuses: vec![502, 503],
            },
            budget_percent: 20.0,
            min_per_second: 3,
            per_try_timeout: None,
        }
    }

    #[test]
    fn only_safe_requests_are_replayed() {
        let p = policy();
        assert!(wants_retry(&p, Failure::Status(503), &Method::GET, true, 0));
        assert!(
            !wants_retry(&p, Failure::Status(503), &Method::POST, true, 0),
            "not idempotent"
        );
        assert!(
            !wants_retry(&p, Failure::Status(503), &Method::GET, false, 0),
            "body not kept"
        );
        assert!(
            wants_retry(&p, Failure::Connect, &Method::POST, true, 0),
            "never sent: given back whole"
        );
        assert!(
            !wants_retry(&p, Failure::Connect, &Method::GET, false, 0),
            "nothing left to send"
        );
        assert!(
            !wants_retry(&p, Failure::Status(500), &Method::GET, true, 0),
            "not listed"
        );
        assert!(
            !wants_retry(&p, Failure::Timeout, &Method::GET, true, 0),
            "not listed"
        );
        assert!(
            !wants_retry(&p, Failure::Reset, &Method::GET, true, 2),
            "attempts used up"
        );
    }
}
