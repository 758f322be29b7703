//! Stamp an `Idempotency-Key` on POST and PATCH, never overwriting the caller's.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Method, Request, Response};
//! use kneo::idempotency::IdempotencyKeyLayer;
//! use kneo::Sent;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|req: Request<()>| async move {
//!     let key = req.headers().get("idempotency-key").cloned();
//!     Ok::<_, Infallible>(Response::new(key))
//! });
//! let svc = IdempotencyKeyLayer::new().layer(upstream);
//!
//! // A POST without a key gets one (a UUID v4)...
//! let post = Request::post("/charges").body(()).unwrap();
//! let res = svc.clone().oneshot(post).await.unwrap();
//! let key = res.body().clone().unwrap();
//! assert_eq!(key.len(), 36);
//! // ...which the response carries too, in the request's identity.
//! assert_eq!(res.extensions().get::<Sent>().unwrap().idempotency_key_value(), Some(&key));
//!
//! // A caller's key is never overwritten.
//! let post = Request::post("/charges").header("idempotency-key", "charge-41").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(post).await.unwrap().into_body().unwrap(), "charge-41");
//!
//! // A GET is idempotent already: no key.
//! let get = Request::get("/charges").body(()).unwrap();
//! assert!(svc.oneshot(get).await.unwrap().body().is_none());
//! # }
//! ```
//!
//! # Where it goes
//!
//! Above the [retry layer](crate::retry), so every attempt of one logical
//! request carries the same key and a retried POST cannot be applied twice.
//!
//! # What it guarantees
//!
//! - Requests whose method is in the set (POST and PATCH by default) leave
//!   with an `Idempotency-Key`; a key the caller set is passed on untouched
//!   (the stripe-php#637 bug was overwriting it).
//! - The key is in the request's identity, [`Sent`](crate::Sent), in its
//!   extensions and the response's, and in any
//!   [`kneo::Error`](crate::Error) for the request.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use kneo_core::IDEMPOTENCY_KEY;
use tower_layer::Layer;
use tower_service::Service;

pub use crate::extension::ResponseFuture;
use crate::id::uuid_v4_header;
use crate::identity;

/// Stamps idempotency keys; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct IdempotencyKeyLayer {
    methods: Arc<[Method]>,
}

impl IdempotencyKeyLayer {
    /// Keys on POST and PATCH.
    pub fn new() -> Self {
        IdempotencyKeyLayer {
            methods: Arc::from([Method::POST, Method::PATCH]),
        }
    }

    /// Keys on exactly these methods instead.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }
}

impl Default for IdempotencyKeyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for IdempotencyKeyLayer {
    type Service = SetIdempotencyKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetIdempotencyKey {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// The service [`IdempotencyKeyLayer`] makes.
#[derive(Debug, Clone)]
pub struct SetIdempotencyKey<S> {
    inner: S,
    methods: Arc<[Method]>,
}

impl<S> SetIdempotencyKey<S> {
    /// Wraps `inner`, keying POST and PATCH.
    pub fn new(inner: S) -> Self {
        IdempotencyKeyLayer::new().layer(inner)
    }

    /// An [`IdempotencyKeyLayer`] keying POST and PATCH.
    pub fn layer() -> IdempotencyKeyLayer {
        IdempotencyKeyLayer::new()
    }

    kneo_core::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for SetIdempotencyKey<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let key = match req.headers().get(IDEMPOTENCY_KEY) {
            Some(caller) => Some(caller.clone()),
            None if self.methods.contains(req.method()) => {
                let key = uuid_v4_header();
                req.headers_mut().insert(IDEMPOTENCY_KEY, key.clone());
                Some(key)
            }
            None => None,
        };
        let sent = Some(identity::stamp_idempotency_key(&mut req, key));
        ResponseFuture {
            inner: self.inner.call(req),
            sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    async fn key_for(method: Method, layer: IdempotencyKeyLayer) -> Option<http::HeaderValue> {
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(req.headers().get(IDEMPOTENCY_KEY).cloned()))
        }));
        let req = Request::builder().method(method).body(()).expect("valid");
        svc.oneshot(req).await.expect("infallible").into_body()
    }

    #[tokio::test]
    async fn default_methods() {
        for m in [Method::POST, Method::PATCH] {
            assert!(key_for(m, IdempotencyKeyLayer::new()).await.is_some());
        }
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            assert!(key_for(m, IdempotencyKeyLayer::new()).await.is_none());
        }
    }

    #[tokio::test]
    async fn configurable_methods_and_fresh_keys() {
        let layer = IdempotencyKeyLayer::new().methods([Method::PUT]);
        assert!(key_for(Method::PUT, layer.clone()).await.is_some());
        assert!(key_for(Method::POST, layer).await.is_none());
        let a = key_for(Method::POST, IdempotencyKeyLayer::new()).await;
        let b = key_for(Method::POST, IdempotencyKeyLayer::new()).await;
        assert_ne!(a, b, "each logical request gets its own key");
    }
}
