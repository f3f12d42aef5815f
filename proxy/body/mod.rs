//! The two body types of a proxied exchange, streamed frame by frame, never buffered whole.
//!
//! [`ReqBody`] is what goes upstream: the client's body as it arrives, or bytes already read
//! (for a replayable retry or a mirrored copy). [`RespBody`] is what goes back to the client:
//! the backend's body with a guard that learns how the stream ended, or a short local answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::BoxError;

pub(crate) mod limits;

/// The client's body failed while it was being forwarded: the client's fault, not the
/// backend's. The forwarder finds it in an upstream error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed")]
pub(crate) struct ClientBodyError(#[source] pub(crate) hyper::Error);

/// Sees a request body's bytes as they go to the backend (the shadow mirror's copy).
pub(crate) trait BodyTap: Send + std::fmt::Debug + 'static {
    fn data(&mut self, chunk: &Bytes);
    /// The body arrived whole. A tap dropped without this call saw an incomplete body.
    fn end(self: Box<Self>);
}

/// A request body on its way to a backend.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Streaming(Incoming),
    Full(Option<Bytes>),
    /// Streaming under the listener's body limits.
    Guarded(Box<limits::Guarded>),
    /// Streaming (guarded or not), with a tap that sees every chunk.
    Tapped {
        body: Box<ReqBody>,
        tap: Option<Box<dyn BodyTap>>,
    },
}

impl ReqBody {
    pub(crate) fn empty() -> Self {
        ReqBody::Full(None)
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        ReqBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Streaming(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(ClientBodyError(e)) as BoxError),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ReqBody::Guarded(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ReqBody::Tapped { body, tap } => {
                let polled = Pin::new(body.as_mut()).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(t), Some(d)) = (tap.as_mut(), frame.data_ref()) {
                            t.data(d);
                        }
                        body.is_end_stream()
                    }
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Err(_))) => {
                        // Incomplete: the tap learns it by being dropped.
                        tap.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if ended && let Some(t) = tap.take() {
                    t.end();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Guarded(b) => b.is_end_stream(),
            ReqBody::Streaming(b) => b.is_end_stream(),
            ReqBody::Tapped { body, .. } => body.is_end_stream(),
            ReqBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Guarded(b) => b.size_hint(),
            ReqBody::Streaming(b) => b.size_hint(),
            ReqBody::Tapped { body, .. } => body.size_hint(),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// How a response stream ended, as far as the proxy could see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte (and trailers) reached the client's connection.
    Complete,
    /// The backend's stream broke off mid-body.
    UpstreamError,
    /// The client went away (the body was dropped before its end).
    Dropped,
}

/// Told once, when a response ends, however it ends.
pub(crate) trait BodyGuard: Send + Unpin + 'static {
    fn finish(self, end: BodyEnd);

    /// Sees each chunk of the body on its way to the client.
    fn data(&mut self, _chunk: &Bytes) {}

    /// Sees the trailers (where gRPC puts its status) on their way to the client.
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
}

/// A response body on its way to the client: a backend's, or a short local answer. Either way
/// its guard hears how it ended.
pub(crate) enum RespBody<G: BodyGuard> {
    Upstream {
        body: Incoming,
        guard: Option<G>,
    },
    Full {
        bytes: Option<Bytes>,
        guard: Option<G>,
    },
}

impl<G: BodyGuard> RespBody<G> {
    pub(crate) fn upstream(body: Incoming, guard: G) -> Self {
        let mut b = RespBody::Upstream {
            body,
            guard: Some(guard),
        };
        // A bodiless response (204, HEAD, empty) is already complete: hyper may never poll it.
        if let RespBody::Upstream { body, guard } = &mut b
            && body.is_end_stream()
            && let Some(g) = guard.take()
        {
            g.finish(BodyEnd::Complete);
        }
        b
    }

    /// A local answer; `guard` hears when it is sent (or the client left first).
    pub(crate) fn full(bytes: impl Into<Bytes>, guard: Option<G>) -> Self {
        let bytes = bytes.into();
        RespBody::Full {
            bytes: (!bytes.is_empty()).then_some(bytes),
            guard,
        }
    }
}

impl<G: BodyGuard> Body for RespBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Upstream { body, guard } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(g) = guard.as_mut()
                {
                    if let Some(d) = frame.data_ref() {
                        g.data(d);
                    } else if let Some(t) = frame.trailers_ref() {
                        g.trailers(t);
                    }
                }
                let end = match &polled {
                    Poll::Ready(None) => Some(BodyEnd::Complete),
                    Poll::Ready(Some(Err(_))) => Some(BodyEnd::UpstreamError),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => Some(BodyEnd::Complete),
                    _ => None,
                };
                // Only take the guard once the end is seen: a taken guard is a finished one.
                if let Some(end) = end
                    && let Some(g) = guard.take()
                {
                    g.finish(end);
                }
                polled
            }
            RespBody::Full { bytes, guard } => match bytes.take() {
                Some(d) => {
                    if let Some(g) = guard.as_mut() {
                        g.data(&d);
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                None => {
                    if let Some(g) = guard.take() {
                        g.finish(BodyEnd::Complete);
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { body, .. } => body.is_end_stream(),
            RespBody::Full { bytes, .. } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { body, .. } => body.size_hint(),
            RespBody::Full { bytes, .. } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<G: BodyGuard> Drop for RespBody<G> {
    fn drop(&mut self) {
        let (guard, end) = match self {
            RespBody::Upstream { guard, .. } => (guard, BodyEnd::Dropped),
            // A local answer hyper never polled (HEAD, or its size said it all) was sent whole;
            // one still holding its bytes was not.
            RespBody::Full { bytes, guard } => (
                guard,
                if bytes.is_none() {
                    BodyEnd::Complete
                } else {
                    BodyEnd::Dropped
                },
            ),
        };
        if let Some(g) = guard.take() {
            g.finish(end);
        }
    }
}
