//! The [`ResponseFuture`] of [`Idempotency`](super::Idempotency) and its
//! [`ResponseBody`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use kneo_core::BoxError;
use pin_project_lite::pin_project;
use tokio::sync::mpsc;

/// The boxed future of a keyed request (one per request; see the module docs).
pub(crate) type KeyedFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`](super::Idempotency).
    ///
    /// Requests the layer does not handle (other methods, no key) run the
    /// inner future unboxed; a keyed request is one boxed future that awaits
    /// the store, the handler, and the store again.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>> },
        Keyed { future: KeyedFuture<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn keyed(future: KeyedFuture<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Keyed { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Ready { .. } => "ready",
            Kind::Keyed { .. } => "keyed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(ResponseBody::inner)))
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("invariant: ResponseFuture polled after completion"))),
            KindProj::Keyed { future } => future.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// The body of every response through [`Idempotency`](super::Idempotency):
    /// the handler's own body, untouched, or the buffered bytes of a stored,
    /// replayed or problem response.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        // A response too big to keep: what was buffered, then the rest.
        Spill { prefix: Option<Bytes>, #[pin] rest: B },
        // The handler's body, relayed by the task that records it.
        Channel { frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>, hint: SizeHint },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: BodyKind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> ResponseBody<B> {
    /// `prefix`, then what is left of `rest` (the transactional layer's
    /// answers, under the `postgres` feature).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn spill(prefix: Bytes, rest: B) -> Self {
        ResponseBody {
            kind: BodyKind::Spill {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
        }
    }
}

/// Frames relayed at once between a request's work and its caller.
const FRAMES_IN_FLIGHT: usize = 8;

/// The sending half of [`ResponseBody::channel`].
pub(crate) type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

impl<B> ResponseBody<B> {
    /// A body fed frame by frame from another task, ending when the sender
    /// is dropped; `hint` is the size hint of the body it relays (so an
    /// exact length still becomes a `Content-Length`).
    pub(crate) fn channel(hint: SizeHint) -> (FrameSender, Self) {
        let (tx, frames) = mpsc::channel(FRAMES_IN_FLIGHT);
        let body = ResponseBody {
            kind: BodyKind::Channel { frames, hint },
        };
        (tx, body)
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(data: Bytes) -> Self {
        ResponseBody::full(data)
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            BodyKind::Inner { .. } => "inner",
            BodyKind::Full { .. } => "full",
            BodyKind::Spill { .. } => "spill",
            BodyKind::Channel { .. } => "channel",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Spill { prefix, rest } => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => rest.poll_frame(cx).map_err(Into::into),
            },
            BodyProj::Channel { frames, .. } => frames.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Full { data } => data.is_none(),
            BodyKind::Spill { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            // Ends when the recording task says so, after the record is kept.
            BodyKind::Channel { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyKind::Spill { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            BodyKind::Channel { hint, .. } => *hint,
        }
    }
}
