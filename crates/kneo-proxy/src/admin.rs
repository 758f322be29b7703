//! [`Admin`]: `/healthz`, `/readyz` and `/metrics`, for the admin listener.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::forward::Proxy;
use crate::shared::Shared;

/// The OpenMetrics text format, which Prometheus scrapes.
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin endpoints of one [`Proxy`] (and all its clones):
///
/// - `GET /healthz`: 200 while the process serves;
/// - `GET /readyz`: 200 once the upstream has accepted a connection, 503
///   before that and while draining;
/// - `GET /metrics`: the [`Metrics`](crate::Metrics) in the Prometheus text format.
///
/// ```
/// use http::{Request, StatusCode};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use kneo_proxy::{Admin, Proxy, ProxyConfig};
///
/// let proxy: Proxy<Full<Bytes>> = Proxy::new(&ProxyConfig::new("http://127.0.0.1:1").unwrap(), None).unwrap();
/// let admin = Admin::new(&proxy);
/// let get = |path: &str| admin.answer(&Request::get(path).body(()).unwrap()).status();
/// assert_eq!(get("/healthz"), StatusCode::OK);
/// assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE, "the upstream was never seen");
/// assert_eq!(get("/metrics"), StatusCode::OK);
/// assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
/// ```
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin endpoints of `proxy`.
    pub fn new<B>(proxy: &Proxy<B>) -> Admin {
        Admin {
            shared: proxy.shared().clone(),
        }
    }

    /// The answer to `req`.
    pub fn answer<T>(&self, req: &Request<T>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let health = &self.shared.health;
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if health.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" if !health.upstream_seen() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "upstream not seen yet\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            _ => {
                let mut res = Response::new(Full::new(Bytes::from(self.shared.metrics.encode())));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
                res
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl<T> Service<Request<T>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<T>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}
