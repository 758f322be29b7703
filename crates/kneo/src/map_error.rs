//! Turn transport errors and non-success responses into one [`kneo::Error`](crate::Error).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use kneo::map_error::MapErrorLayer;
//! use kneo::ErrorKind;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|req: Request<()>| async move {
//!     let status = if req.uri() == "/runs/7" { StatusCode::NOT_FOUND } else { StatusCode::OK };
//!     let body = Full::new(Bytes::from_static(br#"{"error":{"code":"run_missing","message":"run 7 does not exist"}}"#));
//!     Ok::<_, Infallible>(Response::builder().status(status).body(body).unwrap())
//! });
//! let svc = MapErrorLayer::new().layer(upstream);
//!
//! let err = svc.clone().oneshot(Request::get("/runs/7").body(()).unwrap()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::NotFound);
//! assert_eq!(err.code(), "run_missing");
//! assert_eq!(err.message(), "run 7 does not exist");
//!
//! // Success passes through untouched, body unread.
//! let ok = svc.oneshot(Request::get("/runs/8").body(()).unwrap()).await.unwrap();
//! assert_eq!(ok.status(), StatusCode::OK);
//! # }
//! ```
//!
//! # Where it goes
//!
//! Innermost, right above the transport (a hyper-util client), and below the
//! [retry layer](crate::retry), which decides on the typed error.
//!
//! # What it guarantees
//!
//! - Success responses pass through untouched, body still streaming: 1xx,
//!   2xx, and a 304 to a conditional request (`If-None-Match`,
//!   `If-Modified-Since`), as [`kneo_core::is_success`] defines it.
//! - Any other status becomes an [`Error`] through
//!   [`Error::from_response`], the one mapping function, with the error body
//!   read up to the cap (64 KiB by default) and never beyond, however large
//!   the body the server sends.
//! - A transport error becomes an [`ErrorKind::Network`](crate::ErrorKind::Network)
//!   error with the original as its source; [`Error::is_connect`] says whether
//!   the request never left this host.
//! - Every error carries the method, request id and idempotency key sent,
//!   read from what the [request id](crate::request_id) and
//!   [idempotency](crate::idempotency) layers stamped (the request-id header
//!   is configured there, once).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{response, Request, Response};
use http_body::Body;
use kneo_core::{is_success, BoxError, Error, Sent, DEFAULT_BODY_CAP};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::append_capped;
use crate::transport::transport_error;

/// Maps failures to [`Error`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MapErrorLayer {
    body_cap: usize,
    map_responses: bool,
}

impl MapErrorLayer {
    /// Error bodies capped at 64 KiB.
    pub fn new() -> Self {
        MapErrorLayer {
            body_cap: DEFAULT_BODY_CAP,
            map_responses: true,
        }
    }

    /// Keeps at most `cap` bytes of an error body.
    pub fn body_cap(mut self, cap: usize) -> Self {
        self.body_cap = cap;
        self
    }

    /// Whether non-success responses become [`Error`]s (the default,
    /// `true`). With `false` every response passes through untouched,
    /// whatever its status, and only transport errors are mapped: for a
    /// proxy, which must hand the upstream's answer on. See
    /// [Transport errors only](self#transport-errors-only).
    pub fn map_responses(mut self, map: bool) -> Self {
        self.map_responses = map;
        self
    }
}

impl Default for MapErrorLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for MapErrorLayer {
    type Service = MapError<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MapError {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`MapErrorLayer`] makes.
#[derive(Debug, Clone)]
pub struct MapError<S> {
    inner: S,
    layer: MapErrorLayer,
}

impl<S> MapError<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        MapErrorLayer::new().layer(inner)
    }

    /// A [`MapErrorLayer`] with the default configuration.
    pub fn layer() -> MapErrorLayer {
        MapErrorLayer::new()
    }

    kneo_core::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for MapError<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| transport_error(e.into(), Sent::default))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let sent = Sent::of(&req);
        ResponseFuture {
            state: State::Calling {
                future: self.inner.call(req),
            },
            sent: Some(sent),
            cap: self.layer.body_cap,
            map_responses: self.layer.map_responses,
        }
    }
}

pin_project! {
    /// Response future of [`MapError`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        sent: Option<Sent>,
        cap: usize,
        map_responses: bool,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, B> {
        Calling { #[pin] future: F },
        // Only failures get here: the head is boxed so the success path's
        // future stays small (every layer above moves it).
        ReadingBody {
            parts: Option<Box<response::Parts>>,
            #[pin] body: B,
            buf: Vec<u8>,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(e) => {
                            let sent = this.sent.take();
                            let err = transport_error(e.into(), || sent.unwrap_or_default());
                            return Poll::Ready(Err(err));
                        }
                    };
                    let conditional = this.sent.as_ref().is_some_and(Sent::is_conditional);
                    if !*this.map_responses || is_success(response.status(), conditional) {
                        return Poll::Ready(Ok(response));
                    }
                    let (parts, body) = response.into_parts();
                    this.state.set(State::ReadingBody {
                        parts: Some(Box::new(parts)),
                        body,
                        buf: Vec::new(),
                    });
                }
                StateProj::ReadingBody {
                    parts,
                    mut body,
                    buf,
                } => {
                    let cap = *this.cap;
                    // Read until the end, an error, or the cap.
                    let truncated = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            None => break false,
                            // The status already says what failed; keep what arrived.
                            Some(Err(_)) => break true,
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    if append_capped(buf, data, cap) {
                                        break true;
                                    }
                                }
                            }
                        }
                    };
                    let parts = parts
                        .take()
                        .expect("invariant: parts are taken once, when the body is done");
                    let sent = this.sent.take().unwrap_or_default();
                    return Poll::Ready(Err(Error::from_response(&parts, buf, truncated, sent)));
                }
            }
        }
    }
}
