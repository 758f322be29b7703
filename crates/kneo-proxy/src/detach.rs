//! [`Detach`]: upstream calls that outlive an attempt that timed out, for
//! requests whose outcome a layer in front records.
//!
//! kneo-server's idempotency layer puts a [`LateAnswer`] in every keyed
//! request it lets through. For such a request the call to the upstream runs
//! on a task of its own: when the attempt's timer runs out, the attempt ends
//! (the caller gets its `504` at once) but the call goes on, and its answer,
//! read whole up to [`LateAnswer::max_body`] within
//! [`LateAnswer::max_wait`], is handed to the layer, which records it in
//! place of "unknown" ([`kneo::core::delivery`]). Requests without one are
//! called in place: no task, no channel.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use kneo::core::delivery::LateAnswer;
use kneo::BoxError;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::headers::{rewrite, Hop};

/// Runs calls that carry a [`LateAnswer`] on their own task: when the
/// attempt's timer runs out, the call goes on and its answer, read whole up
/// to [`LateAnswer::max_body`] within [`LateAnswer::max_wait`], is handed to
/// the `LateAnswer`. Requests without one are called in place.
#[derive(Debug, Clone)]
pub struct Detach<S> {
    inner: S,
}

impl<S> Detach<S> {
    /// Wraps the transport `inner`.
    pub fn new(inner: S) -> Self {
        Detach { inner }
    }
}

impl<S, Req, ResBody> Service<Request<Req>> for Detach<S>
where
    S: Service<Request<Req>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = DetachFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        let late = req.extensions().get::<LateAnswer>().cloned();
        let call = self.inner.call(req);
        let Some(late) = late else {
            return DetachFuture {
                kind: Kind::InPlace { call },
            };
        };
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let Ok(result) = tokio::time::timeout(late.max_wait(), call).await else {
                return;
            };
            // The attempt takes the answer while it waits; once it has given
            // up, the answer goes to the layer that records it.
            if let Err(Ok(res)) = tx.send(result) {
                let (mut parts, body) = res.into_parts();
                // As the proxy passes any answer on: hop-by-hop headers
                // stripped, its `Via` added.
                rewrite(
                    &mut parts.headers,
                    &Hop::Response {
                        version: parts.version,
                    },
                );
                let body = Limited::new(body, late.max_body()).collect().await;
                match body {
                    Ok(body) => late.deliver(Response::from_parts(parts, Some(body.to_bytes()))),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        late.deliver(Response::from_parts(parts, None));
                    }
                    // The body broke off: no whole answer to hand over.
                    Err(_) => {}
                }
            }
        });
        DetachFuture {
            kind: Kind::Detached { answer: rx },
        }
    }
}

pin_project! {
    /// Response future of [`Detach`].
    pub struct DetachFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

/// What a detached call sends back to its attempt.
type Answer<B, E> = Result<Response<B>, E>;

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        InPlace { #[pin] call: F },
        Detached { answer: oneshot::Receiver<Answer<B, E>> },
    }
}

impl<F, B, E> Future for DetachFuture<F, B, E>
where
    F: Future<Output = Answer<B, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::InPlace { call } => call.poll(cx).map_err(Into::into),
            KindProj::Detached { answer } => match ready!(Pin::new(answer).poll(cx)) {
                Ok(result) => Poll::Ready(result.map_err(Into::into)),
                Err(_) => Poll::Ready(Err("the upstream call was cancelled".into())),
            },
        }
    }
}
