//! [`ClientLayer`]: the four layers, stacked in the right order.

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use tower::retry::budget::Budget;
use tower_layer::Layer;

use crate::idempotency::{IdempotencyKeyLayer, SetIdempotencyKey};
use crate::map_error::{MapError, MapErrorLayer};
use crate::request_id::{RequestIdLayer, SetRequestId};
use crate::retry::{Backoff, Retry, RetryLayer};

/// The whole kneo stack as one [`Layer`], outermost first:
///
/// 1. [`RequestIdLayer`]: one id for every attempt;
/// 2. [`IdempotencyKeyLayer`]: one key for every attempt;
/// 3. [`RetryLayer`]: retries, waits, budget, deadline, per-attempt timeout;
/// 4. [`MapErrorLayer`]: typed [`Error`](crate::Error)s for the retry layer to judge.
///
/// The service it makes is `Clone + Send + Sync` when the inner one is, with
/// `Error = kneo::Error`. To put your own layers in between, stack the four
/// yourself with [`ServiceBuilderExt`](crate::ServiceBuilderExt).
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use kneo::{ClientLayer, ErrorKind};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = service_fn(|req: Request<_>| async move {
///     // Both headers were stamped before the request got here.
///     assert!(req.headers().contains_key("x-request-id"));
///     assert!(req.headers().contains_key("idempotency-key"));
///     let res = Response::builder().status(StatusCode::CONFLICT).body(Full::new(Bytes::new())).unwrap();
///     Ok::<_, Infallible>(res)
/// });
/// let svc = ClientLayer::new().max_attempts(2).layer(upstream);
///
/// let err = svc.oneshot(Request::post("/charges").body(Full::new(Bytes::new())).unwrap()).await.unwrap_err();
/// // A 409 on a keyed request: the key was reused with another payload.
/// assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
/// assert!(err.idempotency_key().is_some());
/// assert_eq!(err.attempts(), 1, "a mismatch is never retried");
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientLayer {
    request_id: RequestIdLayer,
    idempotency: IdempotencyKeyLayer,
    retry: RetryLayer,
    map_error: MapErrorLayer,
}

impl ClientLayer {
    /// The defaults of each layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total attempts, the first included (default 3; 1 = no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry = self.retry.max_attempts(attempts);
        self
    }

    /// The statuses that are retried (default 429, 502, 503, 504).
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retry = self.retry.retry_statuses(statuses);
        self
    }

    /// The longest `Retry-After` waited for (default 60 s).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.retry = self.retry.max_retry_after(max);
        self
    }

    /// The backoff when the server gives no hint.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.retry = self.retry.backoff(backoff);
        self
    }

    /// An overall limit on all attempts and waits.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.retry = self.retry.deadline(deadline);
        self
    }

    /// A limit on each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.retry = self.retry.attempt_timeout(timeout);
        self
    }

    /// A retry budget shared by every service this layer makes.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.retry = self.retry.budget(budget);
        self
    }

    /// How much of a request body is kept for replay (default 64 KiB).
    pub fn replay_cap(mut self, cap: usize) -> Self {
        self.retry = self.retry.replay_cap(cap);
        self
    }

    /// How much of an error body is kept (default 64 KiB).
    pub fn error_body_cap(mut self, cap: usize) -> Self {
        self.map_error = self.map_error.body_cap(cap);
        self
    }

    /// The methods that get an idempotency key (default POST and PATCH; empty
    /// for none: a caller's own key is still passed on).
    pub fn idempotency_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.idempotency = self.idempotency.methods(methods);
        self
    }

    /// The request id header (default `X-Request-ID`), for every layer.
    pub fn request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id = self.request_id.header(header.clone());
        self.retry = self.retry.request_id_header(header.clone());
        self.map_error = self.map_error.request_id_header(header);
        self
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = SetRequestId<SetIdempotencyKey<Retry<MapError<S>>>>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.map_error.layer(inner);
        let inner = self.retry.layer(inner);
        let inner = self.idempotency.layer(inner);
        self.request_id.layer(inner)
    }
}

#[cfg(all(test, feature = "client"))]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_service::Service;

    use crate::retry::ReplayBody;

    fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}

    fn typed<S>(_: &S)
    where
        S: Service<Request<Full<Bytes>>, Error = crate::Error>,
        S::Future: Send + 'static,
    {
    }

    /// Compile-time: the composed stack over hyper-util is `Clone + Send +
    /// Sync`, fails with `kneo::Error`, and its future can be spawned.
    #[test]
    fn composed_service_is_shareable_and_typed() {
        let transport =
            Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
        let svc = ClientLayer::new().layer(transport);
        shareable(&svc);
        typed(&svc);
    }
}
