//! [`ServiceBuilderExt`]: one method per kneo layer on tower's `ServiceBuilder`.

use tower::layer::util::Stack;
use tower::ServiceBuilder;

use crate::idempotency::IdempotencyKeyLayer;
use crate::map_error::MapErrorLayer;
use crate::request_id::RequestIdLayer;
use crate::retry::RetryLayer;

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds kneo's layers to a `ServiceBuilder`, so they interleave with anyone
/// else's. Keep this order, outermost first: request id, idempotency key,
/// retry, error mapping. Layers above retry run once per logical request;
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
/// use kneo::retry::RetryLayer;
/// use kneo::ServiceBuilderExt;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .kneo_request_id()
///     .kneo_idempotency_key()
///     .concurrency_limit(64) // anyone's layer, once per logical request
///     .kneo_retry(RetryLayer::new().max_attempts(2))
///     .kneo_map_error()
///     .timeout(Duration::from_secs(5)) // once per attempt; mapped to a timeout error
///     .service(service_fn(|_req: Request<_>| async {
///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
///     }));
/// let res = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds a [`RequestIdLayer`] with the defaults.
    fn kneo_request_id(self) -> ServiceBuilder<Stack<RequestIdLayer, L>>;
    /// Adds an [`IdempotencyKeyLayer`] with the defaults.
    fn kneo_idempotency_key(self) -> ServiceBuilder<Stack<IdempotencyKeyLayer, L>>;
    /// Adds `layer`, a configured [`RetryLayer`].
    fn kneo_retry(self, layer: RetryLayer) -> ServiceBuilder<Stack<RetryLayer, L>>;
    /// Adds a [`MapErrorLayer`] with the defaults.
    fn kneo_map_error(self) -> ServiceBuilder<Stack<MapErrorLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn kneo_request_id(self) -> ServiceBuilder<Stack<RequestIdLayer, L>> {
        self.layer(RequestIdLayer::new())
    }

    fn kneo_idempotency_key(self) -> ServiceBuilder<Stack<IdempotencyKeyLayer, L>> {
        self.layer(IdempotencyKeyLayer::new())
    }

    fn kneo_retry(self, layer: RetryLayer) -> ServiceBuilder<Stack<RetryLayer, L>> {
        self.layer(layer)
    }

    fn kneo_map_error(self) -> ServiceBuilder<Stack<MapErrorLayer, L>> {
        self.layer(MapErrorLayer::new())
    }
}
