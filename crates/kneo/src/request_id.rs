//! Stamp every request with an `X-Request-ID`, keeping a well-formed one the caller set.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use kneo::request_id::RequestIdLayer;
//! use kneo::Sent;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|req: Request<()>| async move {
//!     // The id is in the header and in the request's identity.
//!     let header = req.headers()["x-request-id"].clone();
//!     assert_eq!(req.extensions().get::<Sent>().unwrap().request_id_value(), Some(&header));
//!     Ok::<_, Infallible>(Response::new(header))
//! });
//! let svc = RequestIdLayer::new().layer(upstream);
//!
//! // No id: one is made (a UUID v4).
//! let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.body().len(), 36);
//! // The response carries the id it was sent with.
//! assert_eq!(res.extensions().get::<Sent>().unwrap().request_id_value(), Some(res.body()));
//!
//! // A well-formed caller id is kept...
//! let req = Request::builder().header("x-request-id", "order-7").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().body(), "order-7");
//!
//! // ...a malformed one is replaced, never passed on.
//! let req = Request::builder().header("x-request-id", "has spaces").body(()).unwrap();
//! assert_ne!(svc.oneshot(req).await.unwrap().body(), "has spaces");
//! # }
//! ```
//!
//! # Where it goes
//!
//! Outermost, above the [retry layer](crate::retry): every attempt of one
//! logical request then carries the same id, and the server's logs for all of
//! them line up with the caller's.
//!
//! # What it guarantees
//!
//! - A request leaves with exactly one id header, 1–128 visible ASCII
//!   characters (no spaces, no control characters): nothing can be injected
//!   into the server's headers or logs through it.
//! - A caller's well-formed id is never replaced. A malformed one is replaced
//!   and the replacement is logged at WARN (target `kneo::request_id`), without
//!   echoing the malformed bytes.
//! - The id is in the request's identity, [`Sent`](crate::Sent), in its
//!   extensions and the response's: every later layer, the error and the
//!   caller read it there (with the header it went in).
//! - The header is configured here and only here: error mapping and the
//!   retry policy read the id, and the header a server echoes it in, from
//!   the request's identity.
//!
//! Why not tower-http's `SetRequestIdLayer` itself? It keeps whatever the
//! caller put in the header; kneo must validate a caller's id first. The id
//! generator trait ([`MakeRequestId`]) and value type are tower-http's; the
//! default generator, [`MakeUuidV4`], is kneo's because it makes the header
//! value in one allocation where tower-http's `MakeRequestUuid` takes three
//! (measured in `benches/overhead.rs`).

use std::fmt;
use std::task::{Context, Poll};

use http::{HeaderName, Request, Response};
use kneo_core::{is_valid_request_id, X_REQUEST_ID};
use tower_layer::Layer;
use tower_service::Service;

pub use crate::extension::ResponseFuture;
pub use crate::id::MakeUuidV4;
use crate::identity;
pub use tower_http::request_id::{MakeRequestId, RequestId};

/// Sets a request id on every request; see the [module docs](self).
#[derive(Clone)]
pub struct RequestIdLayer<M = MakeUuidV4> {
    header: HeaderName,
    make: M,
}

impl RequestIdLayer {
    /// `X-Request-ID` with UUID v4 ids.
    pub fn new() -> Self {
        RequestIdLayer {
            header: X_REQUEST_ID,
            make: MakeUuidV4,
        }
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> RequestIdLayer<M> {
    /// Uses `make` to produce ids (e.g. a counter, a ULID, a trace id).
    pub fn make_request_id<M2>(self, make: M2) -> RequestIdLayer<M2> {
        RequestIdLayer {
            header: self.header,
            make,
        }
    }

    /// Uses `header` instead of `X-Request-ID`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// The header the id goes into.
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }
}

impl<S, M: Clone> Layer<S> for RequestIdLayer<M> {
    type Service = SetRequestId<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId {
            inner,
            header: self.header.clone(),
            make: self.make.clone(),
        }
    }
}

/// The service [`RequestIdLayer`] makes.
#[derive(Clone)]
pub struct SetRequestId<S, M = MakeUuidV4> {
    inner: S,
    header: HeaderName,
    make: M,
}

impl<S> SetRequestId<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        RequestIdLayer::new().layer(inner)
    }

    /// A [`RequestIdLayer`] with the default configuration.
    pub fn layer() -> RequestIdLayer {
        RequestIdLayer::new()
    }
}

impl<S, M> SetRequestId<S, M> {
    kneo_core::define_inner_service_accessors!();
}

// By hand: a generator need not be `Debug`.
impl<M> fmt::Debug for RequestIdLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdLayer")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<S: fmt::Debug, M> fmt::Debug for SetRequestId<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestId")
            .field("inner", &self.inner)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<S, M, B, ResB> Service<Request<B>> for SetRequestId<S, M>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    M: MakeRequestId,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = settle(&self.header, &mut self.make, &mut req);
        let id = id.map(RequestId::into_header_value);
        let sent = Some(identity::stamp_request_id(&mut req, &self.header, id));
        ResponseFuture {
            inner: self.inner.call(req),
            sent,
        }
    }
}

impl<M: MakeRequestId> RequestIdLayer<M> {
    /// Settles `req`'s id as this layer's service does before passing it
    /// on, for a server or gateway that needs the id before the stack runs
    /// (`kneo proxy` settles it as a request arrives): a valid id of the
    /// caller's is kept, else one is made (and a replaced malformed one is
    /// logged at WARN without its bytes); the id becomes the header's only
    /// value. `None` (and no header) when the maker made none. Only the
    /// header is written: the layer's service, which keeps a valid id,
    /// records the request's identity when the request reaches it.
    ///
    /// ```
    /// use http::Request;
    /// use kneo::request_id::RequestIdLayer;
    ///
    /// let mut req = Request::get("/").header("x-request-id", "order-7").body(()).unwrap();
    /// let id = RequestIdLayer::new().settle(&mut req).unwrap();
    /// assert_eq!(id.header_value(), "order-7");
    ///
    /// let mut req = Request::get("/").header("x-request-id", "has spaces").body(()).unwrap();
    /// let made = RequestIdLayer::new().settle(&mut req).unwrap();
    /// assert_eq!(made.header_value().len(), 36, "a UUID");
    /// assert_eq!(req.headers()["x-request-id"], made.header_value());
    /// ```
    pub fn settle<B>(&mut self, req: &mut Request<B>) -> Option<RequestId> {
        settle(&self.header, &mut self.make, req)
    }
}

/// The one rule for a request's id: see [`RequestIdLayer::settle`].
fn settle<B, M: MakeRequestId>(
    header: &HeaderName,
    make: &mut M,
    req: &mut Request<B>,
) -> Option<RequestId> {
    let mut values = req.headers().get_all(header).iter();
    let existing = values.next();
    let sole = values.next().is_none();
    let kept = existing
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .map(|v| RequestId::new(v.clone()));
    let id = match kept {
        // The header is the id already, alone: nothing to write.
        Some(id) if sole => return Some(id),
        Some(id) => Some(id),
        None => {
            let made = make
                .make_request_id(req)
                .filter(|id| is_valid_request_id(id.header_value().as_bytes()));
            if existing.is_some() {
                tracing::warn!(
                    target: "kneo::request_id",
                    header = %header,
                    replacement = ?made.as_ref().map(|id| id.header_value()),
                    "replaced a malformed request id"
                );
            }
            made
        }
    };
    match &id {
        // `insert` also drops any duplicate values of the header.
        Some(id) => {
            req.headers_mut()
                .insert(header.clone(), id.header_value().clone());
        }
        None => {
            req.headers_mut().remove(header);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tower::{service_fn, ServiceExt};

    fn echo() -> impl Service<
        Request<()>,
        Response = Response<Vec<String>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(|req: Request<()>| async move {
            let all = req
                .headers()
                .get_all("x-request-id")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            Ok::<_, Infallible>(Response::new(all))
        })
    }

    async fn send(header: Option<&[u8]>) -> Vec<String> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.headers_mut().insert(
                "x-request-id",
                http::HeaderValue::from_bytes(h).expect("test value"),
            );
        }
        RequestIdLayer::new()
            .layer(echo())
            .oneshot(req)
            .await
            .expect("infallible")
            .into_body()
    }

    #[tokio::test]
    async fn malformed_ids_are_replaced() {
        let long = [b'a'; 129];
        for bad in [
            &b"a b"[..],
            b"tab\there",
            b"\xff",
            &long[..],
            b"caf\xc3\xa9",
        ] {
            let out = send(Some(bad)).await;
            assert_eq!(out.len(), 1);
            assert_ne!(out[0].as_bytes(), bad);
            assert!(is_valid_request_id(out[0].as_bytes()));
        }
        let max = [b'a'; 128];
        assert_eq!(send(Some(&max)).await, vec!["a".repeat(128)]);
    }

    #[tokio::test]
    async fn duplicate_headers_collapse_to_one() {
        let mut req = Request::new(());
        req.headers_mut()
            .append("x-request-id", "first".parse().expect("valid"));
        req.headers_mut()
            .append("x-request-id", "second".parse().expect("valid"));
        let out = RequestIdLayer::new()
            .layer(echo())
            .oneshot(req)
            .await
            .expect("infallible");
        assert_eq!(out.into_body(), vec!["first".to_owned()]);
    }

    #[tokio::test]
    async fn custom_generator_and_header() {
        #[derive(Clone, Default)]
        struct Counter(Arc<AtomicU64>);
        impl MakeRequestId for Counter {
            fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
                let n = self.0.fetch_add(1, Ordering::Relaxed);
                Some(RequestId::new(n.to_string().parse().ok()?))
            }
        }
        let svc = RequestIdLayer::new()
            .header(HeaderName::from_static("request-id"))
            .make_request_id(Counter::default())
            .layer(service_fn(|req: Request<()>| async move {
                Ok::<_, Infallible>(Response::new(req.headers()["request-id"].clone()))
            }));
        assert_eq!(
            svc.clone()
                .oneshot(Request::new(()))
                .await
                .expect("ok")
                .body(),
            "0"
        );
        assert_eq!(svc.oneshot(Request::new(())).await.expect("ok").body(), "1");
    }
}
