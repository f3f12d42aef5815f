//! The listener's limits on a request body as it streams: a maximum size (413) and a minimum
//! data rate after a grace period (408; Kestrel's rule), so a client trickling a body cannot
//! hold a connection and an upstream request forever. Also reads the first frame of a chunked
//! or HTTP/2 body before any backend is contacted, so a body whose framing is broken from the
//! start (a bad chunk size, an HTTP/2 content-length that disagrees with the data) is refused
//! without the backend seeing anything.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::ClientBodyError;
use crate::config::limits::{BodyRate, Limits};
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::stats::limits::{Limit, LimitCounters};

/// A body limit the client broke; the forwarder finds it in an upstream error's source chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyLimitError {
    #[error("the request body is larger than this listener allows")]
    TooLarge,
    #[error("the request body arrived slower than this listener's minimum rate")]
    TooSlow,
}

impl BodyLimitError {
    pub(crate) fn to_proxy_error(self) -> ProxyError {
        let kind = match self {
            BodyLimitError::TooLarge => ErrorKind::BodyTooLarge,
            BodyLimitError::TooSlow => ErrorKind::BodyTooSlow,
        };
        ProxyError::new(kind, self.to_string())
    }
}

/// Time spent waiting for the client's bytes (only while the upstream wants them, so a slow
/// backend is never blamed on the client).
struct RateClock {
    rate: BodyRate,
    waited: Duration,
    waiting_since: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl RateClock {
    /// How long a client that has sent `read` bytes may have kept us waiting in all.
    fn allowed(&self, read: u64) -> Duration {
        let earned = Duration::from_secs_f64(read as f64 / self.rate.bytes_per_second as f64);
        self.rate.grace.max(earned)
    }

    fn progress(&mut self, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
    }

    /// Ready once the client has kept us waiting longer than it earned.
    fn poll_expired(&mut self, cx: &mut Context<'_>, read: u64) -> Poll<()> {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let deadline = since + self.allowed(read).saturating_sub(self.waited);
        if deadline <= now {
            return Poll::Ready(());
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("read", &self.read)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Guarded {
    inner: Incoming,
    /// The first frame, read before the backend was contacted.
    stash: Option<Frame<Bytes>>,
    read: u64,
    max: Option<u64>,
    rate: Option<RateClock>,
    counters: Arc<LimitCounters>,
}

impl Guarded {
    fn fail(&mut self, e: BodyLimitError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.counters.hit(match e {
            BodyLimitError::TooLarge => Limit::MaxRequestBodyBytes,
            BodyLimitError::TooSlow => Limit::MinRequestBodyRate,
        });
        // Once is enough: the exchange is over.
        self.rate = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(f) = this.stash.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(rate) = &mut this.rate {
                    rate.progress(Instant::now());
                }
                this.read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.max.is_some_and(|max| this.read > max) {
                    return this.fail(BodyLimitError::TooLarge);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let read = this.read;
                let expired = this
                    .rate
                    .as_mut()
                    .is_some_and(|rate| rate.poll_expired(cx, read).is_ready());
                if expired {
                    this.fail(BodyLimitError::TooSlow)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stash.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let n = self
            .stash
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(n));
        }
        hint.set_lower(inner.lower().saturating_add(n));
        hint
    }
}

impl Guarded {
    /// Puts a streaming body under a listener's limits; `None` when no limit applies and the
    /// body needs no first look (a body of known length, read as it streams).
    pub(crate) fn new(
        inner: Incoming,
        spec: &Limits,
        counters: &Arc<LimitCounters>,
        prime: bool,
    ) -> Result<Guarded, Incoming> {
        if inner.is_end_stream()
            || (!prime
                && spec.max_request_body_bytes.is_none()
                && spec.min_request_body_rate.is_none())
        {
            return Err(inner);
        }
        Ok(Guarded {
            inner,
            stash: None,
            read: 0,
            max: spec.max_request_body_bytes,
            rate: spec.min_request_body_rate.map(|rate| RateClock {
                rate,
                waited: Duration::ZERO,
                waiting_since: None,
                sleep: None,
            }),
            counters: Arc::clone(counters),
        })
    }

    /// Reads the first frame (kept for the backend), so that a body broken from the start is
    /// refused before any backend is contacted.
    pub(crate) async fn prime(&mut self) -> Result<(), ProxyError> {
        match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                self.stash = Some(frame);
                Ok(())
            }
            None => Ok(()),
            Some(Err(e)) => {
                let e = body_error(e);
                if e.kind() == ErrorKind::BadRequest {
                    self.counters.hit(Limit::MalformedRequest);
                }
                Err(e)
            }
        }
    }
}

pub(crate) fn body_error(e: BoxError) -> ProxyError {
    if let Some(limit) = e.downcast_ref::<BodyLimitError>() {
        return limit.to_proxy_error();
    }
    let gone = e
        .downcast_ref::<ClientBodyError>()
        .is_some_and(|c| c.0.is_incomplete_message());
    let kind = if gone {
        ErrorKind::ClientGone
    } else {
        ErrorKind::BadRequest
    };
    ProxyError::new(kind, "the request body is malformed").with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(bps: u64, grace_s: u64) -> RateClock {
        RateClock {
            rate: BodyRate {
                bytes_per_second: bps,
                grace: Duration::from_secs(grace_s),
            },
            waited: Duration::ZERO,
            waiting_since: None,
            sleep: None,
        }
    }

    #[test]
    fn a_client_earns_time_by_sending() {
        let c = clock(240, 5);
        assert_eq!(c.allowed(0), Duration::from_secs(5));
        assert_eq!(c.allowed(240 * 5), Duration::from_secs(5));
        assert_eq!(c.allowed(240 * 60), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_expires_after_the_grace_and_only_while_waiting() {
        let mut c = clock(100, 5);
        let start = Instant::now();
        // Waiting 3 s, then bytes arrive: 3 s of the 5 s grace are used.
        let _ = std::future::poll_fn(|cx| Poll::Ready(c.poll_expired(cx, 0))).await;
        tokio::time::advance(Duration::from_secs(3)).await;
        c.progress(Instant::now());
        // Time not spent waiting (the upstream was busy) costs nothing.
        tokio::time::advance(Duration::from_secs(100)).await;
        let resumed = Instant::now();
        std::future::poll_fn(|cx| c.poll_expired(cx, 0)).await;
        assert_eq!(Instant::now() - resumed, Duration::from_secs(2));
        // 1000 bytes earn 10 s in all; 5 s were used.
        let mut c = clock(100, 5);
        let _ = std::future::poll_fn(|cx| Poll::Ready(c.poll_expired(cx, 0))).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        c.progress(Instant::now());
        let again = Instant::now();
        std::future::poll_fn(|cx| c.poll_expired(cx, 1000)).await;
        assert_eq!(Instant::now() - again, Duration::from_secs(5));
        assert!(Instant::now() > start);
    }
}
