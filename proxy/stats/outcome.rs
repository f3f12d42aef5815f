//! What became of one try at a backend.

/// The result of one exchange with a backend, as breakers and statistics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response below 500 (a 4xx is the client's business, not the backend's failure).
    Success,
    /// A 5xx response.
    ServerError,
    /// No response head within the (per-try or route) timeout.
    Timeout,
    /// TCP connect refused, timed out or unreachable.
    ConnectFailure,
    /// The connection broke: closed or reset before or during the response.
    Reset,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::ConnectFailure,
        Outcome::Reset,
    ];

    pub(crate) fn from_status(status: u16) -> Outcome {
        if status >= 500 {
            Outcome::ServerError
        } else {
            Outcome::Success
        }
    }

    /// Only upstream failures count against a backend.
    pub(crate) fn is_failure(self) -> bool {
        self != Outcome::Success
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ServerError => "5xx",
            Outcome::Timeout => "timeout",
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Reset => "reset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upstream_failures_fail() {
        assert!(!Outcome::from_status(404).is_failure());
        assert!(!Outcome::from_status(200).is_failure());
        assert!(Outcome::from_status(503).is_failure());
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
