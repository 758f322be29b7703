//! A response future that copies one request extension onto the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`SetRequestId`](crate::request_id::SetRequestId) and
    /// [`SetIdempotencyKey`](crate::idempotency::SetIdempotencyKey): puts the
    /// value the layer stamped into the response's extensions, so a caller can
    /// read the id or key it was sent with.
    #[derive(Debug)]
    pub struct ResponseFuture<F, T> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) value: Option<T>,
    }
}

impl<F, T, B, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<Response<B>, E>>,
    T: Clone + Send + Sync + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(value)) = (&mut res, this.value.take()) {
            response.extensions_mut().insert(value);
        }
        Poll::Ready(res)
    }
}
