//! [`serve`] and [`serve_admin`]: hyper's HTTP/1 and HTTP/2 servers around
//! a [`Proxy`] and its [`Admin`], with the limits of a [`ServerConfig`] and a
//! graceful drain. Which signal starts the drain is the binary's business: it hands
//! in a future.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kneo::BoxError;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;

use crate::admin::Admin;
use crate::arrival::Arrival;
use crate::config::ServerConfig;
use crate::forward::{forward_on, ClientAddr, Proxy, ProxyBody, ResponseFuture, Stack};
use crate::metrics::Held;
use crate::outcome::FLUSH_EVERY;
use crate::shared::settle_request_id;
use crate::upgrade;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    cut: bool,
}

impl Drained {
    pub(crate) fn new(cut: bool) -> Drained {
        Drained { cut }
    }

    /// `true` when every connection finished within the drain timeout;
    /// `false` when some were cut off.
    pub fn completed(&self) -> bool {
        !self.cut
    }
}

/// Serves `proxy` on `listener` until `shutdown` resolves, then drains.
///
/// - A connection that opens with the HTTP/2 preface is served as HTTP/2
///   (h2c, prior knowledge), any other as HTTP/1.1.
/// - An HTTP/1.1 upgrade (WebSocket) is forwarded once, outside the kneo
///   stack and any front; on `101` the two connections are joined into a
///   tunnel, which keeps the connection's place under `max_connections`.
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
///   a `503` problem, then closed (HTTP/2: the streams it sent are
///   answered, then `GOAWAY`); past twice the limit it is closed
///   unanswered. Both are counted.
/// - Until the upstream has been seen, it is probed once a second so that
///   `/readyz` turns 200 without waiting for traffic.
/// - When `shutdown` resolves: `/readyz` answers 503, the listener is
///   closed, idle connections are closed (HTTP/2 ones get `GOAWAY`),
///   in-flight requests finish (their connections closing after them) and
///   tunnels run on, for up to
///   [`drain_timeout`](ServerConfig::drain_timeout); then what is left is
///   cut.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    serve_inner(listener, proxy, None, config, 0, shutdown).await
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
/// itself here, as [`ExchangeOutcome::Replayed`](crate::ExchangeOutcome::Replayed) (the
/// response says `Idempotent-Replayed: true`) or
/// [`ExchangeOutcome::Idempotency`](crate::ExchangeOutcome::Idempotency), with no attempts.
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
    serve_inner(listener, proxy, Some(front), config, 0, shutdown).await
}

/// Serves `listener` as [`serve_with`] says, counting its connections as
/// `worker`'s.
pub(crate) async fn serve_inner(
    listener: TcpListener,
    proxy: Proxy,
    front: Option<Front>,
    config: &ServerConfig,
    worker: usize,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let protocols = Arc::new(Protocols::new(config));
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    let max = config.max_connections;
    let probe = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.probe_upstream(Duration::from_secs(1)).await })
    };
    let flusher = proxy.shared().on_exchange.is_some().then(|| {
        let shared = proxy.shared().clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                shared.flush_log();
            }
        })
    });
    let metrics = proxy.metrics();
    let connections_accepted = metrics.accepted(worker);
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
        connections_accepted.inc();
        // Every open caller connection and tunnel, as the gauge counts them.
        let n = usize::try_from(metrics.open_connections.get()).unwrap_or(0);
        let overloaded = n >= max;
        if overloaded {
            metrics.overload_connections.inc();
            if n >= max.saturating_mul(2) {
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let svc = PerConnection {
            stack: std::cell::RefCell::new(proxy.stack()),
            proxy: proxy.clone(),
            front: front.clone(),
            peer,
            overloaded,
            open: Arc::new(Held::new(&metrics.open_connections)),
            close_after_answer: None,
        };
        connections.spawn(protocols.clone().serve(stream, svc, draining.clone()));
    }
    proxy.health().set_draining();
    drop(listener);
    probe.abort();
    draining.cancel();
    connections.close();
    let upgrades = proxy.upgrades();
    let everything = async {
        connections.wait().await;
        upgrades.closed().await;
    };
    let drained = tokio::time::timeout(config.drain_timeout, everything).await;
    if drained.is_err() {
        upgrades.cut();
    }
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    proxy.shared().flush_log();
    Drained {
        cut: drained.is_err(),
    }
}

/// The connection protocols a caller may speak, and their settings.
struct Protocols {
    http1: http1::Builder,
    /// HTTP/1 for a connection over `max_connections`: one answer, then closed.
    http1_overloaded: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Protocols {
    fn new(config: &ServerConfig) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_bytes);
        let mut http1_overloaded = http1.clone();
        http1_overloaded.keep_alive(false);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        Protocols {
            http1,
            http1_overloaded,
            http2,
            header_read_timeout: config.header_read_timeout,
        }
    }

    /// Serves one caller connection: HTTP/2 when it opens with the HTTP/2
    /// preface (h2c with prior knowledge), else HTTP/1 with upgrades.
    /// `draining` starts a graceful close: HTTP/1 finishes the request in
    /// flight, HTTP/2 sends `GOAWAY` and finishes the streams it has.
    ///
    /// The preface is peeked here, not by hyper-util's `auto` builder: that
    /// one waits for the first bytes without a timeout (a silent connection
    /// would hold its slot for ever) and cannot set HTTP/1's header size
    /// limit. A caller has the header read timeout to send them.
    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        mut svc: PerConnection,
        draining: CancellationToken,
    ) {
        let peer = svc.peer;
        let overloaded = svc.overloaded;
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(self.header_read_timeout, sniff(&stream)) => sniffed,
            () = draining.cancelled() => return,
        };
        let ended = match sniffed {
            Ok(Ok(true)) => {
                // Over the limit, the first answer (a 503) closes it: the
                // streams already sent are answered, then GOAWAY.
                let closing = draining.child_token();
                if overloaded {
                    svc.close_after_answer = Some(closing.clone());
                }
                let conn = self.http2.serve_connection(TokioIo::new(stream), svc);
                drive(conn, closing, http2::Connection::graceful_shutdown).await
            }
            Ok(Ok(false)) => {
                let builder = if overloaded {
                    &self.http1_overloaded
                } else {
                    &self.http1
                };
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                drive(
                    conn,
                    draining,
                    http1::UpgradeableConnection::graceful_shutdown,
                )
                .await
            }
            // Closed, or silent past the header read timeout: as hyper's
            // HTTP/1 does after its header read timeout, close unanswered.
            Ok(Err(_)) | Err(_) => return,
        };
        if let Err(e) = ended {
            tracing::debug!(target: "kneo::proxy", "connection from {peer} ended: {e}");
        }
    }
}

/// Whether the caller opened with the HTTP/2 preface: peeks (reads
/// nothing) until the first bytes tell. `PRI` is no HTTP/1 method: the
/// preface was chosen so that HTTP/1 servers refuse it.
async fn sniff(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0; PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface: wait for the rest (peeking again at once
        // would see the same bytes).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Drives `conn` to its end; once `draining` is cancelled, asks it to close
/// gracefully (hyper's `graceful_shutdown`) and goes on driving it.
async fn drive<C, E>(
    conn: C,
    draining: CancellationToken,
    graceful: fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => return ended,
        () = draining.cancelled() => graceful(conn.as_mut()),
    }
    conn.await
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
#[derive(Clone)]
struct PerConnection {
    proxy: Proxy,
    /// The proxy's stack, called for each request on this connection
    /// (hyper calls a connection's service one request at a time).
    stack: std::cell::RefCell<Stack<Incoming>>,
    front: Option<Front>,
    peer: SocketAddr,
    overloaded: bool,
    /// This connection's place under `max_connections`, held by the
    /// connection and by a tunnel it became.
    open: Arc<Held>,
    /// Cancelled by an answer, to close the connection after it (HTTP/2
    /// over the limit; HTTP/1 does it by turning keep-alive off).
    close_after_answer: Option<CancellationToken>,
}

type ProxyFuture = <Proxy as tower_service::Service<Request<Incoming>>>::Future;
type FrontFuture = Observed<tower::util::Oneshot<Front, Request<Incoming>>>;
/// An upgrade's handshake (rare: boxed).
type UpgradeFuture = Pin<
    Box<dyn Future<Output = Result<Response<Either<ProxyBody, FrontBody>>, Infallible>> + Send>,
>;

impl hyper::service::Service<Request<Incoming>> for PerConnection {
    type Response = Response<Either<ProxyBody, FrontBody>>;
    type Error = Infallible;
    type Future = future::Either<
        future::Either<
            future::MapOk<ProxyFuture, fn(Response<ProxyBody>) -> Self::Response>,
            future::MapOk<FrontFuture, fn(Response<FrontBody>) -> Self::Response>,
        >,
        UpgradeFuture,
    >;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let direct: fn(Response<ProxyBody>) -> Self::Response = |res| res.map(Either::Left);
        let fronted: fn(Response<FrontBody>) -> Self::Response = |res| res.map(Either::Right);
        let id = settle_request_id(&mut req);
        if self.overloaded {
            if let Some(close) = &self.close_after_answer {
                close.cancel();
            }
            let answer = ResponseFuture::ready(self.proxy.overloaded(&req));
            return future::Either::Left(future::Either::Left(answer.map_ok(direct)));
        }
        // An upgrade is not the stack's (nor the front's): forwarded once.
        // Not a keyed one: that would step around the idempotency layer, so
        // a retry with its key could run it twice. It goes the usual way,
        // its `Upgrade` dropped as hop-by-hop.
        let keyed = req.headers().contains_key(kneo::core::IDEMPOTENCY_KEY);
        let upgrade = upgrade::upgrade_protocol(req.headers(), req.version()).filter(|_| !keyed);
        if let Some(protocol) = upgrade {
            let (upgrades, shared) = (self.proxy.upgrades(), self.proxy.shared());
            let answer = upgrade::forward(
                upgrades.clone(),
                shared.clone(),
                req,
                self.peer.ip(),
                protocol,
                self.open.clone(),
            );
            return future::Either::Right(Box::pin(
                async move { Ok(answer.await.map(Either::Left)) },
            ));
        }
        future::Either::Left(match &self.front {
            Some(front) => {
                req.extensions_mut().insert(ClientAddr(self.peer));
                let arrival = Arrival::new(self.proxy.shared(), &req, id);
                let answer = Observed {
                    inner: front.clone().oneshot(req),
                    arrival: Some(arrival),
                };
                future::Either::Right(answer.map_ok(fronted))
            }
            None => {
                // Straight to the stack: the address goes along as it is,
                // not through the request's extensions.
                let peer = Some(self.peer.ip());
                let answer =
                    forward_on(self.proxy.shared(), &mut self.stack.borrow_mut(), req, peer);
                future::Either::Left(answer.map_ok(direct))
            }
        })
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
