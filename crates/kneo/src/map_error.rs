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
//! - Success (1xx, 2xx) responses pass through untouched, body still streaming.
//! - Any other status becomes an [`Error`] through
//!   [`Error::from_response`], the one mapping function, with the error body
//!   read up to the cap (64 KiB by default) and never beyond, however large
//!   the body the server sends.
//! - A transport error becomes an [`ErrorKind::Network`](crate::ErrorKind::Network)
//!   error with the original as its source; [`Error::is_connect`] says whether
//!   the request never left this host.
//! - Every error carries the method, request id and idempotency key sent.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http::{response, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use kneo_core::{BoxError, Error, Sent, DEFAULT_BODY_CAP, IDEMPOTENCY_KEY, X_REQUEST_ID};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// Maps failures to [`Error`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MapErrorLayer {
    body_cap: usize,
    request_id_header: HeaderName,
}

impl MapErrorLayer {
    /// Error bodies capped at 64 KiB; the request id read from `X-Request-ID`.
    pub fn new() -> Self {
        MapErrorLayer {
            body_cap: DEFAULT_BODY_CAP,
            request_id_header: X_REQUEST_ID,
        }
    }

    /// Keeps at most `cap` bytes of an error body.
    pub fn body_cap(mut self, cap: usize) -> Self {
        self.body_cap = cap;
        self
    }

    /// Reads the request id from `header` (match the request id layer's).
    pub fn request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id_header = header;
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

    define_inner_service_accessors!();
}

/// What the request carried, captured cheaply (header values are reference
/// counted) and turned into a [`Sent`] only when an error is built.
#[derive(Debug, Clone)]
pub(crate) struct SentHeaders {
    method: Method,
    request_id_header: HeaderName,
    request_id: Option<HeaderValue>,
    idempotency_key: Option<HeaderValue>,
}

impl SentHeaders {
    pub(crate) fn capture<B>(req: &Request<B>, request_id_header: &HeaderName) -> Self {
        SentHeaders {
            method: req.method().clone(),
            request_id_header: request_id_header.clone(),
            request_id: req.headers().get(request_id_header).cloned(),
            idempotency_key: req.headers().get(IDEMPOTENCY_KEY).cloned(),
        }
    }

    pub(crate) fn into_sent(self) -> Sent {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = self.request_id {
            headers.insert(self.request_id_header.clone(), v);
        }
        if let Some(v) = self.idempotency_key {
            headers.insert(IDEMPOTENCY_KEY, v);
        }
        Sent::from_headers(&self.method, &headers, &self.request_id_header)
    }
}

/// Appends `data` to `buf`, keeping `buf` within `cap` bytes; `true` when
/// some of `data` did not fit (the body is longer than the cap).
pub(crate) fn append_capped(buf: &mut Vec<u8>, mut data: impl Buf, cap: usize) -> bool {
    while data.has_remaining() {
        let chunk = data.chunk();
        let take = chunk.len().min(cap.saturating_sub(buf.len()));
        buf.extend_from_slice(&chunk[..take]);
        if take < chunk.len() {
            return true;
        }
        data.advance(take);
    }
    false
}

/// Classifies a transport error: a `kneo::Error` passes through; anything
/// else becomes a network error, marked as a connect failure when hyper-util
/// says so (DNS, TCP connect and TLS all fail inside its connector).
pub(crate) fn transport_error(err: BoxError, sent: impl FnOnce() -> Sent) -> Error {
    let err = match err.downcast::<Error>() {
        Ok(mut e) => {
            e.fill_sent(sent());
            return *e;
        }
        Err(other) => other,
    };
    // tower's `Timeout` below this layer: keep it, under an I/O timeout so
    // `is_timeout()` sees it.
    let err: BoxError = if err.is::<tower::timeout::error::Elapsed>() {
        Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, err))
    } else {
        err
    };
    let connect = is_connect(&*err);
    let mapped = Error::network(err, sent());
    if connect {
        mapped.connect()
    } else {
        mapped
    }
}

#[cfg(feature = "client")]
fn is_connect(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| (*e).source()).any(|e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
    })
}

#[cfg(not(feature = "client"))]
fn is_connect(_: &(dyn std::error::Error + 'static)) -> bool {
    false
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
        let sent = SentHeaders::capture(&req, &self.layer.request_id_header);
        ResponseFuture {
            state: State::Calling {
                future: self.inner.call(req),
            },
            sent: Some(sent),
            cap: self.layer.body_cap,
        }
    }
}

pin_project! {
    /// Response future of [`MapError`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        sent: Option<SentHeaders>,
        cap: usize,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, B> {
        Calling { #[pin] future: F },
        ReadingBody {
            parts: Option<response::Parts>,
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
                            let err = transport_error(e.into(), || {
                                sent.map(SentHeaders::into_sent).unwrap_or_default()
                            });
                            return Poll::Ready(Err(err));
                        }
                    };
                    let status = response.status();
                    if status.is_success() || status.is_informational() {
                        return Poll::Ready(Ok(response));
                    }
                    let (parts, body) = response.into_parts();
                    this.state.set(State::ReadingBody {
                        parts: Some(parts),
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
                    let sent = this
                        .sent
                        .take()
                        .map(SentHeaders::into_sent)
                        .unwrap_or_default();
                    return Poll::Ready(Err(Error::from_response(&parts, buf, truncated, sent)));
                }
            }
        }
    }
}
