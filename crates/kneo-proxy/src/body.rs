//! [`ProxyBody`]: what the proxy answers with.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use kneo::BoxError;

use crate::pool::UpstreamBody;

/// The response body: the upstream's, streamed, or a problem.
#[derive(Debug)]
pub struct ProxyBody(Either<UpstreamBody, Full<Bytes>>);

impl ProxyBody {
    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        ProxyBody(Either::Left(body))
    }

    pub(crate) fn full(body: Full<Bytes>) -> Self {
        ProxyBody(Either::Right(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
