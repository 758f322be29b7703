//! The response future of the stamping layers: puts the request's identity
//! on the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use kneo_core::Sent;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`SetRequestId`](crate::request_id::SetRequestId) and
    /// [`SetIdempotencyKey`](crate::idempotency::SetIdempotencyKey): puts the
    /// request's [`Sent`] (its id and key) into the response's extensions, so a
    /// caller can read what it was sent with. A value already there, from a
    /// stamping layer further in, which saw more, is kept.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) sent: Option<Sent>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(sent)) = (&mut res, this.sent.take()) {
            if response.extensions().get::<Sent>().is_none() {
                response.extensions_mut().insert(sent);
            }
        }
        Poll::Ready(res)
    }
}
