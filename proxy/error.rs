//! One error type for the request path, and the one place that maps it to a status code.
//!
//! Every failure a request can meet is a [`ProxyError`]: what went wrong ([`ErrorKind`]), a
//! line that explains it, and the underlying cause. Whose fault a try's failure was, and
//! whether it may be retried, is decided once per try by `http::attempt::classify`.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// No route matches the request.
    NoRoute,
    /// The request is malformed or not acceptable.
    BadRequest,
    /// Every backend that could take the request is open, unhealthy or missing.
    NoBackend,
    /// TCP connect to the backend failed or timed out.
    Connect,
    /// No response headers within the route's timeout.
    Timeout,
    /// The backend closed or reset the connection, or sent an invalid response.
    Reset,
    /// The client went away before the response was complete.
    ClientGone,
    /// The request body was larger than the listener allows.
    BodyTooLarge,
    /// The request body came slower than the listener's minimum rate.
    BodyTooSlow,
    /// The proxy itself ran out of file descriptors, socket buffers or memory.
    LocalResource,
    /// Something the proxy itself got wrong.
    Internal,
}

impl ErrorKind {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::NoBackend | ErrorKind::LocalResource => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Connect | ErrorKind::Reset => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            // Nobody reads it, but a log line still wants a code: nginx's 499.
            ErrorKind::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable token, used in the `x-switchyard-error` header and in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no-route",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::NoBackend => "no-backend",
            ErrorKind::Connect => "connect-failure",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::ClientGone => "client-gone",
            ErrorKind::BodyTooLarge => "body-too-large",
            ErrorKind::BodyTooSlow => "body-too-slow",
            ErrorKind::LocalResource => "local-resources",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A failure on the request path, with enough context to explain it in one line.
#[derive(Debug)]
pub(crate) struct ProxyError {
    kind: ErrorKind,
    /// Safe to show the client: names the cause, never an address.
    context: String,
    /// For the log only: which backend, what it said.
    detail: Option<String>,
    source: Option<BoxError>,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        ProxyError {
            kind,
            context: context.into(),
            detail: None,
            source: None,
        }
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn no_route() -> Self {
        ProxyError::new(ErrorKind::NoRoute, "no route matches this request")
    }

    pub(crate) fn timeout(upstream: &str, after: Duration) -> Self {
        ProxyError::new(
            ErrorKind::Timeout,
            format!("upstream {upstream} sent no response within {after:?}"),
        )
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub(crate) fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
            let mut next = source.source();
            while let Some(cause) = next {
                write!(f, ": {cause}")?;
                next = cause.source();
            }
        }
        Ok(())
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_documented_statuses() {
        assert_eq!(ErrorKind::NoRoute.status(), 404);
        assert_eq!(ErrorKind::Connect.status(), 502);
        assert_eq!(ErrorKind::Timeout.status(), 504);
        assert_eq!(ErrorKind::BadRequest.status(), 400);
        assert_eq!(ErrorKind::NoBackend.status(), 503);
    }

    #[test]
    fn display_walks_the_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ProxyError::new(ErrorKind::Connect, "cannot connect to upstream `a`")
            .with_detail("127.0.0.1:1")
            .with_source(io);
        assert_eq!(
            e.to_string(),
            "cannot connect to upstream `a` (127.0.0.1:1): refused"
        );
        assert_eq!(e.context(), "cannot connect to upstream `a`");
    }
}
