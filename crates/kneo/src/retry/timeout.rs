//! The per-attempt timeout, bounded by the overall deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use kneo_core::{Error, Sent};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::deadline::Deadline;
use crate::trace;
use tracing::Span;

/// Fails an attempt that takes longer than the per-attempt timeout or runs
/// past the deadline. Sits between the retry layer and the inner service.
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> AttemptTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Option<Duration>) -> Self {
        AttemptTimeout { inner, timeout }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for AttemptTimeout<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = Deadline::of(&req);
        // No clock read on the common path: no timeout, no deadline.
        let limit = (self.timeout.is_some() || deadline.is_some()).then(|| {
            let now = Instant::now();
            let left = deadline.map(|at| at.saturating_duration_since(now));
            let limit = match (self.timeout, left) {
                (Some(t), Some(l)) => t.min(l),
                (t, l) => t.or(l).unwrap_or_default(),
            };
            (now + limit, limit)
        });
        let span = trace::attempt_span(&req);
        // Only a limited attempt can fail here, with the request's identity.
        let limit = limit.map(|(at, after)| {
            Box::pin(Limit {
                sleep: tokio::time::sleep_until(at),
                after,
                sent: Sent::of(&req),
            })
        });
        TimeoutFuture {
            inner: span.in_scope(|| self.inner.call(req)),
            span,
            limit,
        }
    }
}

pin_project! {
    /// Response future of [`AttemptTimeout`].
    #[derive(Debug)]
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        // Boxed: without a timeout (the default) the future stays small.
        limit: Option<Pin<Box<Limit>>>,
        span: Span,
    }
}

pin_project! {
    /// An attempt's time limit: its timer, and what the timeout error says.
    #[derive(Debug)]
    struct Limit {
        #[pin]
        sleep: Sleep,
        after: Duration,
        sent: Sent,
    }
}

impl<F, ResB> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<ResB>, Error>>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let out = match this.inner.poll(cx) {
            Poll::Ready(out) => out,
            Poll::Pending => match this.limit.as_mut() {
                Some(limit) => {
                    let limit = limit.as_mut().project();
                    ready!(limit.sleep.poll(cx));
                    Err(Error::timeout(*limit.after, std::mem::take(limit.sent)))
                }
                None => return Poll::Pending,
            },
        };
        trace::record(this.span, &out);
        Poll::Ready(out)
    }
}
