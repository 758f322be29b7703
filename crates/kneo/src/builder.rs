//! [`ServiceBuilderExt`]: one method per kneo layer on tower's `ServiceBuilder`.

use tower::layer::util::Stack;
use tower::ServiceBuilder;

use crate::idempotency::IdempotencyKeyLayer;
use crate::map_error::MapErrorLayer;
use crate::request_id::RequestIdLayer;
use crate::retry::RetryLayer;
use crate::throttle::ThrottleLayer;

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds kneo's layers to a `ServiceBuilder`, each configured, so they
/// interleave with anyone else's. Keep this order, outermost first: request
/// id, idempotency key, throttle, retry, error mapping (as
/// [`ClientLayer`](crate::ClientLayer) stacks them). The request-id header is
/// configured once, on the [`RequestIdLayer`]: the layers below read it from
/// the request. Layers above retry run once per logical request;
/// layers below it run once per attempt, and those whose error is not a
/// `kneo::Error` (tower's `Timeout`, say) go below the error mapping, which
/// turns their errors into typed ones.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use kneo::idempotency::IdempotencyKeyLayer;
/// use kneo::map_error::MapErrorLayer;
/// use kneo::request_id::RequestIdLayer;
/// use kneo::retry::RetryLayer;
/// use kneo::throttle::ThrottleLayer;
/// use kneo::ServiceBuilderExt;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .kneo_request_id(RequestIdLayer::new())
///     .kneo_idempotency_key(IdempotencyKeyLayer::new())
///     .kneo_throttle(ThrottleLayer::new())
///     .concurrency_limit(64) // anyone's layer, once per logical request
///     .kneo_retry(RetryLayer::new().max_attempts(2))
///     .kneo_map_error(MapErrorLayer::new())
///     .timeout(Duration::from_secs(5)) // once per attempt; mapped to a timeout error
///     .service(service_fn(|_req: Request<_>| async {
///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
///     }));
/// let res = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds `layer`, a configured [`RequestIdLayer`].
    fn kneo_request_id<M>(
        self,
        layer: RequestIdLayer<M>,
    ) -> ServiceBuilder<Stack<RequestIdLayer<M>, L>>;
    /// Adds `layer`, a configured [`IdempotencyKeyLayer`].
    fn kneo_idempotency_key(
        self,
        layer: IdempotencyKeyLayer,
    ) -> ServiceBuilder<Stack<IdempotencyKeyLayer, L>>;
    /// Adds `layer`, a configured [`ThrottleLayer`].
    fn kneo_throttle(self, layer: ThrottleLayer) -> ServiceBuilder<Stack<ThrottleLayer, L>>;
    /// Adds `layer`, a configured [`RetryLayer`].
    fn kneo_retry(self, layer: RetryLayer) -> ServiceBuilder<Stack<RetryLayer, L>>;
    /// Adds `layer`, a configured [`MapErrorLayer`].
    fn kneo_map_error(self, layer: MapErrorLayer) -> ServiceBuilder<Stack<MapErrorLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn kneo_request_id<M>(
        self,
        layer: RequestIdLayer<M>,
    ) -> ServiceBuilder<Stack<RequestIdLayer<M>, L>> {
        self.layer(layer)
    }

    fn kneo_idempotency_key(
        self,
        layer: IdempotencyKeyLayer,
    ) -> ServiceBuilder<Stack<IdempotencyKeyLayer, L>> {
        self.layer(layer)
    }

    fn kneo_throttle(self, layer: ThrottleLayer) -> ServiceBuilder<Stack<ThrottleLayer, L>> {
        self.layer(layer)
    }

    fn kneo_retry(self, layer: RetryLayer) -> ServiceBuilder<Stack<RetryLayer, L>> {
        self.layer(layer)
    }

    fn kneo_map_error(self, layer: MapErrorLayer) -> ServiceBuilder<Stack<MapErrorLayer, L>> {
        self.layer(layer)
    }
}
