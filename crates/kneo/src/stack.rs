//! [`ClientLayer`]: kneo's five layers, stacked in the right order.

use std::time::Duration;

use tower_layer::Layer;

use crate::idempotency::{IdempotencyKeyLayer, SetIdempotencyKey};
use crate::map_error::{MapError, MapErrorLayer};
use crate::request_id::{MakeUuidV4, RequestIdLayer, SetRequestId};
use crate::retry::{Retry, RetryLayer};
use crate::throttle::{Throttle, ThrottleLayer};

/// The whole kneo stack as one [`Layer`], outermost first:
///
/// 1. [`RequestIdLayer`]: one id for every attempt;
/// 2. [`IdempotencyKeyLayer`]: one key for every attempt;
/// 3. [`ThrottleLayer`]: waits for an announced rate-limit reset before
///    sending (up to the retry layer's `max_retry_after`, within its deadline);
/// 4. [`RetryLayer`]: retries, waits, budget, deadline, per-attempt timeout;
/// 5. [`MapErrorLayer`]: typed [`Error`](crate::Error)s for the retry layer to judge.
///
/// The service it makes is `Clone + Send + Sync` when the inner one is, with
/// `Error = kneo::Error`. To put your own layers in between, stack the five
/// yourself with [`ServiceBuilderExt`](crate::ServiceBuilderExt). Each layer
/// is configured on its own and handed in whole
/// (`.retry(RetryLayer::new().max_attempts(5))`); `max_attempts`,
/// `attempt_timeout` and `deadline` are shortcuts for the three retry
/// settings most often changed.
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
#[derive(Debug, Clone)]
pub struct ClientLayer<M = MakeUuidV4> {
    request_id: RequestIdLayer<M>,
    idempotency: IdempotencyKeyLayer,
    /// `None`: derived from the retry layer's waits when the stack is built.
    throttle: Option<ThrottleLayer>,
    retry: RetryLayer,
    map_error: MapErrorLayer,
}

impl Default for ClientLayer {
    fn default() -> Self {
        ClientLayer {
            request_id: RequestIdLayer::new(),
            idempotency: IdempotencyKeyLayer::new(),
            throttle: None,
            retry: RetryLayer::new(),
            map_error: MapErrorLayer::new(),
        }
    }
}

impl ClientLayer {
    /// The defaults of each layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<M> ClientLayer<M> {
    /// Uses `layer` for request ids (its header, its id generator).
    pub fn request_id<M2>(self, layer: RequestIdLayer<M2>) -> ClientLayer<M2> {
        let ClientLayer {
            idempotency,
            throttle,
            retry,
            map_error,
            ..
        } = self;
        ClientLayer {
            request_id: layer,
            idempotency,
            throttle,
            retry,
            map_error,
        }
    }

    /// Uses `layer` for idempotency keys (which methods get one).
    pub fn idempotency(self, layer: IdempotencyKeyLayer) -> Self {
        ClientLayer {
            idempotency: layer,
            ..self
        }
    }

    /// Uses `layer` for the rate-limit throttle, instead of one that waits up
    /// to the retry layer's `max_retry_after` and within its deadline.
    pub fn throttle(self, layer: ThrottleLayer) -> Self {
        ClientLayer {
            throttle: Some(layer),
            ..self
        }
    }

    /// Uses `layer` for retries: attempts, statuses, waits, budget, timeouts,
    /// replay cap. See [`RetryLayer`] for each setting.
    pub fn retry(self, layer: RetryLayer) -> Self {
        ClientLayer {
            retry: layer,
            ..self
        }
    }

    /// Uses `layer` for error mapping (the error-body cap).
    pub fn map_error(self, layer: MapErrorLayer) -> Self {
        ClientLayer {
            map_error: layer,
            ..self
        }
    }

    /// Shortcut for [`RetryLayer::max_attempts`] on the current retry layer.
    pub fn max_attempts(self, attempts: u32) -> Self {
        ClientLayer {
            retry: self.retry.max_attempts(attempts),
            ..self
        }
    }

    /// Shortcut for [`RetryLayer::attempt_timeout`] on the current retry layer.
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        ClientLayer {
            retry: self.retry.attempt_timeout(timeout),
            ..self
        }
    }

    /// Shortcut for [`RetryLayer::deadline`] on the current retry layer.
    pub fn deadline(self, deadline: Duration) -> Self {
        ClientLayer {
            retry: self.retry.deadline(deadline),
            ..self
        }
    }

    /// Shortcut for [`RetryLayer::no_budget`]: no retry quota, no budget.
    pub fn no_budget(self) -> Self {
        ClientLayer {
            retry: self.retry.no_budget(),
            ..self
        }
    }

    /// The retry layer as configured.
    pub fn retry_layer(&self) -> &RetryLayer {
        &self.retry
    }

    /// The throttle layer as configured, else the one [`layer`](Layer::layer)
    /// builds: waits bounded by the retry layer's.
    pub fn throttle_layer(&self) -> ThrottleLayer {
        self.throttle.clone().unwrap_or_else(|| {
            let (max_wait, deadline) = self.retry.waits();
            ThrottleLayer::new().max_wait(max_wait).deadline(deadline)
        })
    }

    /// The request-id layer as configured.
    pub fn request_id_layer(&self) -> &RequestIdLayer<M> {
        &self.request_id
    }
}

impl<S, M: Clone> Layer<S> for ClientLayer<M> {
    type Service = SetRequestId<SetIdempotencyKey<Throttle<Retry<MapError<S>>>>, M>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.map_error.layer(inner);
        let inner = self.retry.layer(inner);
        let inner = self.throttle_layer().layer(inner);
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
