//! [`serve`] and [`serve_admin`]: hyper's HTTP/1 server around a [`Proxy`]
//! and its [`Admin`], with the limits of a [`ServerConfig`] and a graceful
//! drain. Which signal starts the drain is the binary's business: it hands
//! in a future.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, TryFutureExt};
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use kneo::BoxError;
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;

use crate::admin::Admin;
use crate::config::ServerConfig;
use crate::forward::{settle_request_id, Arrival, ClientAddr, Proxy, ProxyBody, ResponseFuture};

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    cut: bool,
}

impl Drained {
    /// `true` when every connection finished within the drain timeout;
    /// `false` when some were cut off.
    pub fn completed(&self) -> bool {
        !self.cut
    }
}

/// Serves `proxy` on `listener` until `shutdown` resolves, then drains.
///
/// - Each request's id is settled first: a valid `X-Request-ID` of the
///   caller's is kept, else one is made (as kneo's `RequestIdLayer` makes
///   them) and set, so that everything after sees one id.
/// - Each caller connection gets the [`ClientAddr`] of its peer in every
///   request's extensions (for `X-Forwarded-For`).
/// - A caller has [`header_read_timeout`](ServerConfig::header_read_timeout)
///   to send a whole request head of at most
///   [`max_header_bytes`](ServerConfig::max_header_bytes) (else `431`).
/// - Past [`max_connections`](ServerConfig::max_connections) open
///   connections, a new one is still accepted and its request answered with
///   a `503` problem, then closed; past twice the limit it is closed
///   unanswered. Both are counted.
/// - Until the upstream has been seen, it is probed once a second so that
///   `/readyz` turns 200 without waiting for traffic.
/// - When `shutdown` resolves: `/readyz` answers 503, the listener is
///   closed, idle connections are closed, in-flight requests finish (their
///   connections closing after them) for up to
///   [`drain_timeout`](ServerConfig::drain_timeout).
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    serve_inner(listener, proxy, None, config, shutdown).await
}

/// A service in front of the proxy, boxed: what [`serve_with`] hands each
/// request to (for example kneo-server's `IdempotencyLayer` over
/// [`Proxy::with_body`]).
pub type Front = BoxCloneSyncService<Request<Incoming>, Response<FrontBody>, Infallible>;

/// The response body of a [`Front`].
pub type FrontBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes `service` into a [`Front`].
pub fn front<S, B>(service: S) -> Front
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(tower::ServiceExt::map_response(
        service,
        |res: Response<B>| res.map(|body| body.map_err(Into::into).boxed_unsync()),
    ))
}

/// [`serve`], with every request that is not refused at the connection
/// limit handed to `front` instead of straight to `proxy` (which still
/// answers the overload, probes the upstream and keeps the health state).
///
/// Every answer is recorded once, in `proxy`'s metrics and access-log hook:
/// those `proxy` forwarded by `proxy` itself, and those `front` made by
/// itself here, as [`Outcome::Replayed`](crate::Outcome::Replayed) (the
/// response says `Idempotent-Replayed: true`) or
/// [`Outcome::Idempotency`](crate::Outcome::Idempotency), with no attempts.
/// Those also get this request's `X-Request-ID` when they carry none, and a
/// `Via` when they carry none (a replay keeps the one of the answer it
/// replays).
pub async fn serve_with(
    listener: TcpListener,
    proxy: Proxy,
    front: Front,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    serve_inner(listener, proxy, Some(front), config, shutdown).await
}

async fn serve_inner(
    listener: TcpListener,
    proxy: Proxy,
    front: Option<Front>,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes);
    let mut overload = builder.clone();
    overload.keep_alive(false);

    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let max = config.max_connections;
    let probe = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.probe_upstream(Duration::from_secs(1)).await })
    };
    let metrics = proxy.metrics();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(target: "kneo::proxy", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let n = open.load(Ordering::Relaxed);
        let overloaded = n >= max;
        if overloaded {
            metrics.overload_connections.inc();
            if n >= max.saturating_mul(2) {
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let guard = OpenConnection::new(&open, &metrics.open_connections);
        let svc = PerConnection {
            proxy: proxy.clone(),
            front: front.clone(),
            peer,
            overloaded,
        };
        let conn = if overloaded { &overload } else { &builder }
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(target: "kneo::proxy", "connection from {peer} ended: {e}");
            }
        });
    }
    proxy.health().set_draining();
    drop(listener);
    probe.abort();
    let drained = tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await;
    Drained {
        cut: drained.is_err(),
    }
}

/// Serves `admin` on `listener` until `shutdown` resolves. Keep it running
/// while the proxy drains, so `/readyz` can say so.
pub async fn serve_admin(
    listener: TcpListener,
    admin: Admin,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            std::future::ready(Ok::<_, Infallible>(admin.answer(&req)))
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// One caller connection's service: the proxy with the peer's address.
struct PerConnection {
    proxy: Proxy,
    front: Option<Front>,
    peer: SocketAddr,
    overloaded: bool,
}

type ProxyFuture = <Proxy as tower_service::Service<Request<Incoming>>>::Future;
type FrontFuture = Observed<tower::util::Oneshot<Front, Request<Incoming>>>;

impl hyper::service::Service<Request<Incoming>> for PerConnection {
    type Response = Response<Either<ProxyBody, FrontBody>>;
    type Error = Infallible;
    type Future = future::Either<
        future::MapOk<ProxyFuture, fn(Response<ProxyBody>) -> Self::Response>,
        future::MapOk<FrontFuture, fn(Response<FrontBody>) -> Self::Response>,
    >;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let direct: fn(Response<ProxyBody>) -> Self::Response = |res| res.map(Either::Left);
        let fronted: fn(Response<FrontBody>) -> Self::Response = |res| res.map(Either::Right);
        let id = settle_request_id(&mut req);
        if self.overloaded {
            let answer = ResponseFuture::ready(self.proxy.overloaded(&req));
            return future::Either::Left(answer.map_ok(direct));
        }
        req.extensions_mut().insert(ClientAddr(self.peer));
        match &self.front {
            Some(front) => {
                let arrival = Arrival::new(self.proxy.shared(), &req, id);
                let answer = Observed {
                    inner: front.clone().oneshot(req),
                    arrival: Some(arrival),
                };
                future::Either::Right(answer.map_ok(fronted))
            }
            None => future::Either::Left(self.proxy.forward(req).map_ok(direct)),
        }
    }
}

pin_project! {
    /// A front's response future: the answer finished by its [`Arrival`]
    /// (recorded, when the proxy did not forward it).
    struct Observed<F> {
        #[pin]
        inner: F,
        arrival: Option<Arrival>,
    }
}

impl<F, B> Future for Observed<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = ready!(this.inner.poll(cx));
        if let Some(arrival) = this.arrival.take() {
            arrival.finish(&mut res);
        }
        Poll::Ready(Ok(res))
    }
}

/// Counts an open caller connection until dropped.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>, gauge: &Gauge) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        OpenConnection {
            open: open.clone(),
            gauge: gauge.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}
