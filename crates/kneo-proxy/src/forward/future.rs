//! [`ResponseFuture`]: the stack's answer finished for the caller (headers
//! rewritten, the id echoed, recorded once), and [`ProxyBody`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Method, Response, Uri, Version};
use kneo::core::X_REQUEST_ID;
use kneo::Attempts;
use kneo::Sent;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::headers::{rewrite, Hop};
use crate::metrics::Held;
use crate::outcome::{Exchange, ExchangeOutcome};
use crate::pool::UpstreamBody;
use crate::problem::ProblemAnswer;
use crate::shared::{finish_problem, record, upstream_request_id, Recorded, Shared};

/// What the response future needs once the stack has answered.
pub(super) struct State {
    pub(super) shared: Arc<Shared>,
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) start: Instant,
    pub(super) _in_flight: Held,
}

pin_project! {
    /// Response future of [`Proxy`].
    pub struct ResponseFuture<F> {
        #[pin]
        pub(super) inner: Option<F>,
        pub(super) ready: Option<Response<ProxyBody>>,
        pub(super) state: Option<State>,
    }
}

impl<F> ResponseFuture<F> {
    /// A future that answers `res` at once.
    pub(crate) fn ready(res: Response<ProxyBody>) -> Self {
        ResponseFuture {
            inner: None,
            ready: Some(res),
            state: None,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<UpstreamBody>, kneo::Error>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(mut res) = this.ready.take() {
            res.extensions_mut().insert(Recorded);
            return Poll::Ready(Ok(res));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            // Polled after completion: hyper never does; answer something sane.
            return Poll::Ready(Ok(ProblemAnswer::bad_request(None)
                .into_response()
                .map(ProxyBody::full)));
        };
        let result = ready!(inner.poll(cx));
        let state = this
            .state
            .take()
            .expect("invariant: state is taken once, when the stack answers");
        let elapsed = state.start.elapsed();
        let mut res = match result {
            Ok(res) => {
                state.shared.health.mark_upstream_seen();
                let attempts = res
                    .extensions()
                    .get::<Attempts>()
                    .map_or(1, Attempts::count);
                let (mut parts, body) = res.into_parts();
                let identity = parts.extensions.remove::<Sent>();
                rewrite(
                    &mut parts.headers,
                    &Hop::Response {
                        version: parts.version,
                    },
                );
                let sent = identity.as_ref().and_then(Sent::request_id_value);
                if let Some(sent) = sent {
                    parts
                        .headers
                        .entry(X_REQUEST_ID)
                        .or_insert_with(|| sent.clone());
                }
                parts.version = Version::HTTP_11;
                record(
                    &state.shared,
                    &Exchange {
                        request_id: sent.and_then(|v| v.to_str().ok()),
                        upstream_request_id: upstream_request_id(&parts.headers, sent),
                        method: &state.method,
                        path: state.uri.path(),
                        status: parts.status,
                        attempts,
                        upstream_time: elapsed,
                        outcome: ExchangeOutcome::Upstream,
                    },
                );
                Response::from_parts(parts, ProxyBody::upstream(body))
            }
            Err(err) => {
                let answer = ProblemAnswer::from_error(&err);
                let mut res = finish_problem(
                    &state.shared,
                    answer,
                    &state.method,
                    &state.uri,
                    state.start,
                );
                // Whether the upstream may have seen it, for a layer in
                // front that keeps records (kneo-server's idempotency layer).
                if let Some(delivery) = kneo::core::Delivery::of(&err) {
                    res.extensions_mut().insert(delivery);
                }
                res
            }
        };
        // For the layer in front: this answer is recorded already.
        res.extensions_mut().insert(Recorded);
        Poll::Ready(Ok(res))
    }
}
