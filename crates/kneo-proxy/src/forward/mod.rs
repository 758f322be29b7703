//! [`Proxy`]: the forwarding service. The kneo client stack (request id,
//! idempotency key, retry) over the upstream's [`Connections`], with header
//! rewriting on the way in and out, and a problem answer when there is no
//! upstream answer to pass on.

mod future;

pub(crate) use crate::body::ProxyBody;
pub(crate) use crate::shared::ClientAddr;
pub use future::ResponseFuture;
use future::State;

use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kneo::map_error::MapErrorLayer;
use kneo::retry::{RatioBudget, ReplayBody};
use kneo::transport::Alpn;
use kneo::{BoxError, ClientLayer};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConfigError, ProxyConfig, Upstream};
use crate::detach::Detach;
use crate::metrics::{CountingBudget, Held, Metrics};
use crate::outcome::ExchangeHook;
use crate::pool::{Connections, Pool, IDLE_TIMEOUT};
use crate::problem::ProblemAnswer;
use crate::shared::{finish_problem, settled_id, Health, Shared};
use crate::upgrade::Upgrades;

/// The request body the server hands over: hyper's, streaming.
pub use hyper::body::Incoming;

/// The transport under the stack: the upstream's [`Connections`], whose calls
/// for recorded requests outlive a timed-out attempt ([`Detach`]).
type Transport<B> = Detach<Connections<ReplayBody<B>>>;
/// The kneo stack over the transport.
pub(crate) type Stack<B> = <ClientLayer as Layer<Transport<B>>>::Service;
/// The kneo stack's response future.
pub(crate) type StackFuture<B> = <Stack<B> as Service<Request<B>>>::Future;

/// The forwarding service: `Request<B>` in, the upstream's response (or a
/// problem) out, never an error. See the [crate docs](crate).
///
/// Cheap to clone; clones share the connection pool, the retry budget, the
/// metrics and the health state.
pub struct Proxy<B = Incoming> {
    stack: Stack<B>,
    shared: Arc<Shared>,
    upgrades: Arc<Upgrades>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Proxy {
            stack: self.stack.clone(),
            shared: self.shared.clone(),
            upgrades: self.upgrades.clone(),
        }
    }
}

impl<B> fmt::Debug for Proxy<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl<B> Proxy<B>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A proxy as `config` says; `on_exchange` is called once per answered
    /// request (an access log, say).
    pub fn new(
        config: &ProxyConfig,
        on_exchange: Option<ExchangeHook>,
    ) -> Result<Proxy<B>, ConfigError> {
        let metrics = Metrics::new();
        let client = client_layer(config, &metrics);
        let stack = client.layer(transport(config)?);
        Ok(Proxy {
            stack,
            shared: Arc::new(Shared {
                upstream: config.upstream.clone(),
                metrics,
                health: Arc::new(Health::default()),
                on_exchange,
                client,
            }),
            upgrades: Arc::new(Upgrades::new(config)?),
        })
    }

    /// The same proxy (metrics, health, access log, retry budget) for
    /// requests whose body is a `B2`: for a layer in front that wraps the
    /// caller's body (the idempotency layer of `kneo-server`, say), or for
    /// another [worker](crate::Workers). It has its own connection pool.
    pub fn with_body<B2>(&self, config: &ProxyConfig) -> Result<Proxy<B2>, ConfigError>
    where
        B2: Body + Send + Unpin + 'static,
        B2::Error: Into<BoxError>,
    {
        Ok(Proxy {
            stack: self.shared.client.layer(transport(config)?),
            shared: self.shared.clone(),
            upgrades: self.upgrades.clone(),
        })
    }
}

/// The kneo stack `config` asks for, with the proxy's own error mapping
/// (upstream answers pass through) and its budget counting refusals into
/// `metrics`. Every stack it builds shares the budget and what the throttle
/// learned.
fn client_layer(config: &ProxyConfig, metrics: &Metrics) -> ClientLayer {
    let throttle = config.client.throttle_layer().shared();
    let mut layer = config
        .client
        .clone()
        .throttle(throttle)
        .map_error(MapErrorLayer::new().map_responses(false));
    if let Some(ratio) = config.budget_ratio {
        let retry = layer.retry_layer().clone().budget(CountingBudget {
            inner: RatioBudget::new(Duration::from_secs(10), 10, ratio),
            refusals: metrics.budget_refusals.clone(),
        });
        layer = layer.retry(retry);
    }
    layer
}

fn transport<B>(config: &ProxyConfig) -> Result<Transport<B>, ConfigError>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(target) = config.upstream.plain_http1(config.upstream_h2c) {
        return Ok(Detach::new(Connections::pooled(Pool::new(
            target,
            config.connect_timeout,
        ))));
    }
    let mut client = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    client
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .timer(TokioTimer::new())
        .http2_only(config.upstream_h2c);
    Ok(Detach::new(Connections::shared(
        client.build(config.connector(Alpn::H2AndHttp1)?),
    )))
}

impl<B> Proxy<B> {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The upgrade client and its tunnels, shared by every clone.
    pub(crate) fn upgrades(&self) -> &Arc<Upgrades> {
        &self.upgrades
    }

    /// The metrics every clone records into.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The readiness state `/readyz` reports.
    pub fn health(&self) -> &Arc<Health> {
        &self.shared.health
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.shared.upstream
    }

    /// Tries a TCP connection to the upstream every `every` until one is
    /// accepted (or a forwarded request got an answer), so `/readyz` turns
    /// 200 before the first request. Returns once the upstream was seen.
    pub async fn probe_upstream(&self, every: Duration) {
        let (host, port) = self.shared.upstream.host_port();
        while !self.shared.health.upstream_seen() {
            let attempt = tokio::time::timeout(every, tokio::net::TcpStream::connect((host, port)));
            match attempt.await {
                Ok(Ok(_)) => self.shared.health.mark_upstream_seen(),
                _ => tokio::time::sleep(every).await,
            }
        }
    }

    /// The `503` problem for a request on a connection over
    /// `max_connections`: recorded and logged like any other answer.
    pub fn overloaded<T>(&self, req: &Request<T>) -> Response<ProxyBody> {
        let start = Instant::now();
        let answer = ProblemAnswer::overloaded(settled_id(req.headers()));
        finish_problem(&self.shared, answer, req.method(), req.uri(), start)
    }
}

impl<B> Service<Request<B>> for Proxy<B>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<StackFuture<B>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A failure of the stack's own readiness is that request's problem
        // answer, not the server's.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Proxy { stack, shared, .. } = self;
        let peer = ClientAddr::ip(req.extensions());
        forward_on(shared, stack, req, peer)
    }
}

impl<B> Proxy<B>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Forwards `req` (what [`Service::call`] does, from a shared reference:
    /// on a clone of the stack).
    pub fn forward(&self, req: Request<B>) -> ResponseFuture<StackFuture<B>> {
        let peer = ClientAddr::ip(req.extensions());
        forward_on(&self.shared, &mut self.stack.clone(), req, peer)
    }

    /// A clone of the stack, for [`forward_on`]: a caller connection keeps
    /// one rather than cloning (and dropping) the stack per request.
    pub(crate) fn stack(&self) -> Stack<B> {
        self.stack.clone()
    }
}

/// Forwards `req` on `stack`, one of `shared`'s proxy's stacks.
///
/// Every layer of the stack is ready when the one under it is, down to
/// [`Connections`], which always is: the stack is called at once, with no
/// `Oneshot` holding a clone of it per request. Were it ever not ready, the
/// request is answered `503`, as at the connection limit.
pub(crate) fn forward_on<B>(
    shared: &Arc<Shared>,
    stack: &mut Stack<B>,
    req: Request<B>,
    peer: Option<IpAddr>,
) -> ResponseFuture<StackFuture<B>>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let method = req.method().clone();
    let original = req.uri().clone();
    let (mut parts, body) = req.into_parts();
    if let Err(answer) = shared.retarget(&mut parts, peer) {
        let res = finish_problem(shared, *answer, &method, &original, start);
        return ResponseFuture::ready(res);
    }
    let req = Request::from_parts(parts, body);
    let mut unready = Context::from_waker(Waker::noop());
    if !matches!(stack.poll_ready(&mut unready), Poll::Ready(Ok(()))) {
        let answer = ProblemAnswer::overloaded(settled_id(req.headers()));
        let res = finish_problem(shared, answer, &method, &original, start);
        return ResponseFuture::ready(res);
    }
    let in_flight = Held::new(&shared.metrics.in_flight);
    ResponseFuture {
        inner: Some(stack.call(req)),
        ready: None,
        state: Some(State {
            shared: shared.clone(),
            method,
            uri: original,
            start,
            _in_flight: in_flight,
        }),
    }
}
