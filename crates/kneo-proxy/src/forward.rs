//! [`Proxy`]: the forwarding service. The kneo client stack (request id,
//! idempotency key, retry) over hyper-util's pooled client, with header
//! rewriting on the way in and out, and a problem answer when there is no
//! upstream answer to pass on.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST, VIA};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kneo::core::{is_valid_request_id, X_REQUEST_ID};
use kneo::idempotency::IdempotencyKeyLayer;
use kneo::map_error::MapErrorLayer;
use kneo::request_id::{RequestId, RequestIdLayer};
use kneo::retry::{RatioBudget, ReplayBody, RetryLayer};
pub(crate) use kneo::transport::{Alpn, Connector};
use kneo::{Attempts, BoxError, ClientLayer};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::util::{Oneshot, ServiceExt};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConfigError, ProxyConfig, Upstream};
use crate::detach::Detach;
use crate::headers::{rewrite, Hop};
use crate::metrics::{CountingBudget, Held, Metrics};
use crate::problem::ProblemAnswer;
use crate::upgrade::Upgrades;

/// The request body the server hands over: hyper's, streaming.
pub use hyper::body::Incoming;

/// The transport under the stack: hyper-util's pooled client, whose calls
/// for recorded requests outlive a timed-out attempt ([`Detach`]).
type Transport<B> = Detach<hyper_util::client::legacy::Client<Connector, ReplayBody<B>>>;
/// The kneo stack over the transport.
type Stack<B> = <ClientLayer as Layer<Transport<B>>>::Service;

/// The caller's address, in request extensions; [`serve`](crate::serve)
/// puts it there, and `X-Forwarded-For` gets it appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream's answer, passed on (whatever its status).
    Upstream,
    /// A `502` problem: the upstream could not be reached or hung up.
    Unreachable,
    /// A `504` problem: the per-attempt timeout or the deadline ran out.
    Timeout,
    /// A `503` problem: the proxy is at `max_connections`.
    Overloaded,
    /// A `400` problem: the request could not be forwarded.
    BadRequest,
    /// A `429` problem: the upstream's rate-limit headers said nothing is
    /// left until a reset further away than `--max-retry-after`; not sent.
    RateLimited,
    /// A stored answer replayed by the layer in front of the proxy (the
    /// response says `Idempotent-Replayed: true`); not sent.
    Replayed,
    /// Any other answer the layer in front made by itself: the idempotency
    /// layer's problems (`400`, `409`, `410`, `413`, `422`, and the `503`
    /// when its store is unavailable); not sent.
    Idempotency,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub(crate) const ALL: [Outcome; 8] = [
        Outcome::Upstream,
        Outcome::Unreachable,
        Outcome::Timeout,
        Outcome::Overloaded,
        Outcome::BadRequest,
        Outcome::RateLimited,
        Outcome::Replayed,
        Outcome::Idempotency,
    ];

    /// The outcome as a stable snake_case string (`upstream`, `unreachable`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
            Outcome::Overloaded => "overloaded",
            Outcome::BadRequest => "bad_request",
            Outcome::RateLimited => "rate_limited",
            Outcome::Replayed => "replayed",
            Outcome::Idempotency => "idempotency",
        }
    }
}

/// One answered request, as an access log sees it; handed to the
/// [`ExchangeHook`] given to [`Proxy::new`] once the response head is ready.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub(crate) request_id: Option<&'a str>,
    pub(crate) upstream_request_id: Option<&'a str>,
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    pub(crate) attempts: u32,
    pub(crate) upstream_time: Duration,
    pub(crate) outcome: Outcome,
}

impl Exchange<'_> {
    /// This request's id: the caller's valid `X-Request-ID`, else the one
    /// the proxy made; the id sent upstream, and the one the caller's answer
    /// carries unless the upstream set its own.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id
    }

    /// The upstream's own request id: the `X-Request-ID` of the answer when
    /// it is not the [one sent](Self::request_id) (OpenAI answers
    /// `x-request-id: req_…`, say), and a valid id (1–128 visible ASCII
    /// characters). For a replay, the one the stored answer carries. The
    /// caller gets the header unchanged either way.
    pub fn upstream_request_id(&self) -> Option<&str> {
        self.upstream_request_id
    }

    /// The method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The request path, without the query (which may carry keys).
    pub fn path(&self) -> &str {
        self.path
    }

    /// The status the caller got.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Requests sent upstream for this one (0 when none was: a problem the
    /// proxy made before sending, a replay, the idempotency layer's answers).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// From the request's arrival to the response head: attempts and waits
    /// (and, behind the idempotency layer, its store round trips).
    pub fn upstream_time(&self) -> Duration {
        self.upstream_time
    }

    /// How it was answered.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
}

/// Readiness, as `/readyz` reports it: the upstream has accepted a
/// connection, and the proxy is not draining.
#[derive(Debug, Default)]
pub struct Health {
    upstream_seen: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// `true` once the upstream has accepted a connection and until draining begins.
    pub fn is_ready(&self) -> bool {
        self.upstream_seen() && !self.is_draining()
    }

    /// `true` once the upstream has accepted a connection.
    pub fn upstream_seen(&self) -> bool {
        self.upstream_seen.load(Ordering::Relaxed)
    }

    /// `true` once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the start of shutdown: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn mark_upstream_seen(&self) {
        // A load first: the flag is set once and read on every response.
        if !self.upstream_seen() {
            self.upstream_seen.store(true, Ordering::Relaxed);
        }
    }
}

/// The hook [`Proxy::new`] takes: called once per answered request.
pub type ExchangeHook = Box<dyn Fn(&Exchange<'_>) + Send + Sync>;

/// What every clone of a proxy shares.
pub(crate) struct Shared {
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Metrics,
    pub(crate) health: Arc<Health>,
    on_exchange: Option<ExchangeHook>,
    pub(crate) upgrades: Upgrades,
}

impl Shared {
    /// The upstream URI for a request with these `parts`, or the problem
    /// that refuses it: origin-form (`/path`) or absolute-form
    /// (`http://host/path`) targets only, the path [cleaned](crate::path)
    /// into the upstream's prefix; `CONNECT` is the proxy's to answer, not
    /// the upstream's.
    pub(crate) fn target(&self, parts: &http::request::Parts) -> Result<Uri, Box<ProblemAnswer>> {
        let target = match parts.uri.path_and_query() {
            Some(pq) => pq.as_str(),
            None if parts.uri.scheme().is_some() => "/",
            None => "",
        };
        let mut refused = match self.upstream.uri_for(target) {
            Ok(uri) if parts.method != Method::CONNECT => return Ok(uri),
            _ if parts.method == Method::CONNECT => ProblemAnswer::method_not_allowed(),
            Err(e) => ProblemAnswer::bad_target(e),
            Ok(_) => ProblemAnswer::bad_request(None),
        };
        refused.request_id = settled_id(&parts.headers);
        Err(Box::new(refused))
    }
}

/// The forwarding service: `Request<B>` in, the upstream's response (or a
/// problem) out, never an error. See the [crate docs](crate).
///
/// Cheap to clone; clones share the connection pool, the retry budget, the
/// metrics and the health state.
pub struct Proxy<B = Incoming> {
    stack: Stack<B>,
    shared: Arc<Shared>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Proxy {
            stack: self.stack.clone(),
            shared: self.shared.clone(),
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
        let stack = stack(config, &metrics)?;
        Ok(Proxy {
            stack,
            shared: Arc::new(Shared {
                upstream: config.upstream.clone(),
                metrics,
                health: Arc::new(Health::default()),
                on_exchange,
                upgrades: Upgrades::new(config)?,
            }),
        })
    }

    /// The same proxy (metrics, health, access log) for requests whose body
    /// is a `B2`: for a layer in front that wraps the caller's body (the
    /// idempotency layer of `kneo-server`, say). It has its own connection
    /// pool.
    pub fn with_body<B2>(&self, config: &ProxyConfig) -> Result<Proxy<B2>, ConfigError>
    where
        B2: Body + Send + Unpin + 'static,
        B2::Error: Into<BoxError>,
    {
        Ok(Proxy {
            stack: stack(config, &self.shared.metrics)?,
            shared: self.shared.clone(),
        })
    }
}

/// The kneo stack over a fresh transport, as `config` says.
fn stack<B>(config: &ProxyConfig, metrics: &Metrics) -> Result<Stack<B>, ConfigError>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut retry = RetryLayer::new()
        .max_attempts(config.max_attempts)
        .max_retry_after(config.max_retry_after)
        .replay_cap(config.replay_cap);
    if let Some(timeout) = config.attempt_timeout {
        retry = retry.attempt_timeout(timeout);
    }
    if let Some(deadline) = config.deadline {
        retry = retry.deadline(deadline);
    }
    if let Some(ratio) = config.budget_ratio {
        retry = retry.budget(CountingBudget {
            inner: RatioBudget::new(Duration::from_secs(10), 10, ratio),
            refusals: metrics.budget_refusals.clone(),
        });
    }
    let mut layer = ClientLayer::new()
        .retry(retry)
        .map_error(MapErrorLayer::new().map_responses(false));
    if !config.idempotency_keys {
        layer = layer.idempotency(IdempotencyKeyLayer::new().methods([]));
    }
    Ok(layer.layer(transport(config)?))
}

fn transport<B>(config: &ProxyConfig) -> Result<Transport<B>, ConfigError>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut client = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    client
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .timer(TokioTimer::new())
        .http2_only(config.upstream_h2c);
    Ok(Detach::new(
        client.build(connector(config, Alpn::H2AndHttp1)?),
    ))
}

/// The connector under every upstream connection: kneo's, the connect
/// timeout of `config`, offering `alpn` to TLS upstreams.
pub(crate) fn connector(config: &ProxyConfig, alpn: Alpn) -> Result<Connector, ConfigError> {
    kneo::transport::connector(Some(config.connect_timeout), alpn)
        .map_err(|_| ConfigError("the platform's root certificates could not be loaded"))
}

impl<B> Proxy<B> {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
    type Future = ResponseFuture<Oneshot<Stack<B>, Request<B>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call drives its own clone of the stack to readiness: a
        // failure there is that request's problem answer, not the server's.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.forward(req)
    }
}

impl<B> Proxy<B>
where
    B: Body + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Forwards `req` (what [`Service::call`] does, from a shared reference).
    pub fn forward(&self, req: Request<B>) -> ResponseFuture<Oneshot<Stack<B>, Request<B>>> {
        let start = Instant::now();
        let method = req.method().clone();
        let original = req.uri().clone();
        let (mut parts, body) = req.into_parts();
        let uri = match self.shared.target(&parts) {
            Ok(uri) => uri,
            Err(answer) => {
                let res = finish_problem(&self.shared, *answer, &method, &original, start);
                return ResponseFuture::ready(res);
            }
        };
        let upstream = &self.shared.upstream;
        // HTTP/2 carries the caller's host in the URI, not in `Host`.
        if !parts.headers.contains_key(HOST) {
            if let Some(host) = original
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, host);
            }
        }
        let peer = parts.extensions.get::<ClientAddr>().map(|a| a.0.ip());
        rewrite(
            &mut parts.headers,
            &Hop::Request {
                version: parts.version,
                peer,
                upstream_host: upstream.host().clone(),
            },
        );
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        let in_flight = Held::new(&self.shared.metrics.in_flight);
        ResponseFuture {
            inner: Some(self.stack.clone().oneshot(req)),
            ready: None,
            state: Some(State {
                shared: self.shared.clone(),
                method,
                uri: original,
                start,
                _in_flight: in_flight,
            }),
        }
    }
}

/// Records a problem answer and makes it a response.
pub(crate) fn finish_problem(
    shared: &Shared,
    answer: ProblemAnswer,
    method: &Method,
    uri: &Uri,
    start: Instant,
) -> Response<ProxyBody> {
    record(
        shared,
        &Exchange {
            request_id: answer.request_id.as_deref(),
            upstream_request_id: None,
            method,
            path: uri.path(),
            status: answer.status,
            attempts: answer.attempts,
            upstream_time: start.elapsed(),
            outcome: answer.outcome,
        },
    );
    answer.into_response().map(ProxyBody::full)
}

/// Counts `exchange` in the metrics and hands it to the hook: once per
/// answered request.
pub(crate) fn record(shared: &Shared, exchange: &Exchange<'_>) {
    shared.metrics.record(
        exchange.outcome,
        exchange.status,
        exchange.attempts,
        exchange.upstream_time,
    );
    if let Some(hook) = &shared.on_exchange {
        hook(exchange);
    }
}

/// The upstream's own request id in an answer's `headers`: their
/// `X-Request-ID` when it is valid and not `sent`.
pub(crate) fn upstream_request_id<'h>(
    headers: &'h HeaderMap,
    sent: Option<&HeaderValue>,
) -> Option<&'h str> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| Some(*v) != sent && is_valid_request_id(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
}

/// The request id a [settled](settle_request_id) request carries, for the
/// proxy's own answers (a valid one only: the caller's may not have been).
fn settled_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Settles `req`'s id before anything else sees it, as kneo's
/// `RequestIdLayer` does ([`RequestIdLayer::settle`]): a valid
/// `X-Request-ID` of the caller's is kept, else one is made and set. The
/// layer in front, the kneo stack (which keeps a valid id) and the upstream
/// then all see this one id.
pub(crate) fn settle_request_id<B>(req: &mut Request<B>) -> Option<HeaderValue> {
    RequestIdLayer::new()
        .settle(req)
        .map(RequestId::into_header_value)
}

/// Marks a response that left a [`ResponseFuture`], which recorded it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded;

/// `Idempotent-Replayed` (kneo-server's header; this crate does not depend
/// on kneo-server).
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A request handed to a layer in front of the proxy, as it arrived: what
/// recording its answer needs when that layer answered by itself.
pub(crate) struct Arrival {
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    start: Instant,
}

impl Arrival {
    /// `req`'s arrival now; `request_id` is its [settled](settle_request_id) id.
    pub(crate) fn new<B>(
        shared: &Arc<Shared>,
        req: &Request<B>,
        request_id: Option<HeaderValue>,
    ) -> Arrival {
        Arrival {
            shared: shared.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id,
            start: Instant::now(),
        }
    }

    /// Finishes `res`, the front's answer: one the proxy forwarded was
    /// recorded already (its mark is taken off). Any other is recorded here,
    /// [`Outcome::Replayed`] or [`Outcome::Idempotency`] with no attempts,
    /// and gets the headers the proxy's own answers carry: this request's
    /// `X-Request-ID` when it has none, and the response rules of
    /// [`rewrite`] (this hop's `Via`) unless it has a `Via` already (a
    /// replay of an answer this proxy forwarded keeps the one it had).
    pub(crate) fn finish<B>(self, res: &mut Response<B>) {
        if res.extensions_mut().remove::<Recorded>().is_some() {
            return;
        }
        let replayed = res
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let outcome = if replayed {
            Outcome::Replayed
        } else {
            Outcome::Idempotency
        };
        let headers = res.headers_mut();
        if let Some(id) = &self.request_id {
            headers.entry(X_REQUEST_ID).or_insert_with(|| id.clone());
        }
        if !headers.contains_key(VIA) {
            rewrite(
                headers,
                &Hop::Response {
                    version: Version::HTTP_11,
                },
            );
        }
        record(
            &self.shared,
            &Exchange {
                request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
                upstream_request_id: upstream_request_id(res.headers(), self.request_id.as_ref()),
                method: &self.method,
                path: self.uri.path(),
                status: res.status(),
                attempts: 0,
                upstream_time: self.start.elapsed(),
                outcome,
            },
        );
    }
}

/// What the response future needs once the stack has answered.
struct State {
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    start: Instant,
    _in_flight: Held,
}

pin_project! {
    /// Response future of [`Proxy`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        ready: Option<Response<ProxyBody>>,
        state: Option<State>,
    }
}

impl<F> ResponseFuture<F> {
    /// A future that answers `res` at once.
    pub(crate) fn ready(res: Response<ProxyBody>) -> Self {
        ResponseFuture {
            inner: None,
            ready: Some(res),
            state: None,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Incoming>, kneo::Error>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(mut res) = this.ready.take() {
            res.extensions_mut().insert(Recorded);
            return Poll::Ready(Ok(res));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            // Polled after completion: hyper never does; answer something sane.
            return Poll::Ready(Ok(ProblemAnswer::bad_request(None)
                .into_response()
                .map(ProxyBody::full)));
        };
        let result = ready!(inner.poll(cx));
        let state = this
            .state
            .take()
            .expect("invariant: state is taken once, when the stack answers");
        let elapsed = state.start.elapsed();
        let mut res = match result {
            Ok(res) => {
                state.shared.health.mark_upstream_seen();
                let attempts = res
                    .extensions()
                    .get::<Attempts>()
                    .map_or(1, Attempts::count);
                let (mut parts, body) = res.into_parts();
                let id = parts.extensions.remove::<RequestId>();
                rewrite(
                    &mut parts.headers,
                    &Hop::Response {
                        version: parts.version,
                    },
                );
                let sent = id.as_ref().map(RequestId::header_value);
                if let Some(sent) = sent {
                    parts
                        .headers
                        .entry(X_REQUEST_ID)
                        .or_insert_with(|| sent.clone());
                }
                parts.version = Version::HTTP_11;
                record(
                    &state.shared,
                    &Exchange {
                        request_id: sent.and_then(|v| v.to_str().ok()),
                        upstream_request_id: upstream_request_id(&parts.headers, sent),
                        method: &state.method,
                        path: state.uri.path(),
                        status: parts.status,
                        attempts,
                        upstream_time: elapsed,
                        outcome: Outcome::Upstream,
                    },
                );
                Response::from_parts(parts, ProxyBody::upstream(body))
            }
            Err(err) => {
                let answer = ProblemAnswer::from_error(&err);
                let mut res = finish_problem(
                    &state.shared,
                    answer,
                    &state.method,
                    &state.uri,
                    state.start,
                );
                // Whether the upstream may have seen it, for a layer in
                // front that keeps records (kneo-server's idempotency layer).
                if let Some(delivery) = kneo::core::Delivery::of(&err) {
                    res.extensions_mut().insert(delivery);
                }
                res
            }
        };
        // For the layer in front: this answer is recorded already.
        res.extensions_mut().insert(Recorded);
        Poll::Ready(Ok(res))
    }
}

/// The response body: the upstream's, streamed, or a problem.
#[derive(Debug)]
pub struct ProxyBody(Either<Incoming, Full<Bytes>>);

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming) -> Self {
        ProxyBody(Either::Left(body))
    }

    pub(crate) fn full(body: Full<Bytes>) -> Self {
        ProxyBody(Either::Right(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the hook saw: request id, upstream id, status, attempts, outcome.
    type Line = (Option<String>, Option<String>, u16, u32, &'static str);

    fn proxy() -> (Proxy<Full<Bytes>>, Arc<Mutex<Vec<Line>>>) {
        let seen: Arc<Mutex<Vec<Line>>> = Arc::default();
        let hook: ExchangeHook = {
            let seen = seen.clone();
            Box::new(move |ex: &Exchange<'_>| {
                seen.lock().expect("not poisoned").push((
                    ex.request_id().map(str::to_owned),
                    ex.upstream_request_id().map(str::to_owned),
                    ex.status().as_u16(),
                    ex.attempts(),
                    ex.outcome().as_str(),
                ));
            })
        };
        let config = ProxyConfig::new("http://127.0.0.1:1").expect("a valid upstream");
        let proxy = Proxy::new(&config, Some(hook)).expect("the proxy builds");
        (proxy, seen)
    }

    fn with_ids(ids: &[&'static [u8]]) -> Request<()> {
        let mut req = Request::new(());
        for id in ids {
            let value = HeaderValue::from_bytes(id).expect("a header value");
            req.headers_mut().append(X_REQUEST_ID, value);
        }
        req
    }

    #[test]
    fn the_callers_valid_id_is_kept_else_one_is_made() {
        let mut kept = with_ids(&[b"order-7", b"order-8"]);
        assert_eq!(
            settle_request_id(&mut kept).expect("an id"),
            "order-7",
            "the first valid one"
        );
        let all: Vec<_> = kept.headers().get_all(X_REQUEST_ID).iter().collect();
        assert_eq!(all, ["order-7"], "one header, no duplicates");

        for ids in [&[][..], &[&b"has spaces"[..]], &[&b"caf\xc3\xa9"[..]]] {
            let mut req = with_ids(ids);
            let made = settle_request_id(&mut req).expect("an id is made");
            assert_eq!(made.len(), 36, "a UUID: {made:?}");
            assert_eq!(req.headers()[X_REQUEST_ID], made);
            assert_ne!(
                settle_request_id(&mut with_ids(ids)),
                Some(made),
                "each one new"
            );
        }
    }

    #[tokio::test]
    async fn answers_the_front_made_are_recorded_once_with_this_requests_id() {
        let (proxy, seen) = proxy();
        let arrive = |id: &'static str| {
            let req = Request::post("/charges")
                .header(X_REQUEST_ID, id)
                .body(())
                .expect("valid");
            Arrival::new(proxy.shared(), &req, Some(HeaderValue::from_static(id)))
        };

        // A replay of an answer this proxy forwarded: its Via is kept.
        let mut replay = Response::builder()
            .status(201)
            .header("idempotent-replayed", "true")
            .header("original-request", "first-1")
            .header(VIA, "1.1 kneo")
            .body(())
            .expect("valid");
        arrive("retry-2").finish(&mut replay);
        assert_eq!(replay.headers()[X_REQUEST_ID], "retry-2");
        assert_eq!(replay.headers()["original-request"], "first-1");
        assert_eq!(replay.headers()[VIA], "1.1 kneo");

        // A replay of an answer whose id the upstream set: kept, and logged.
        let mut own = Response::builder()
            .status(200)
            .header("idempotent-replayed", "true")
            .header(X_REQUEST_ID, "req_upstream1")
            .body(())
            .expect("valid");
        arrive("retry-3").finish(&mut own);
        assert_eq!(own.headers()[X_REQUEST_ID], "req_upstream1");
        assert_eq!(own.headers()[VIA], "1.1 kneo");

        // The layer's own problem: gets this request's id and Via.
        let mut problem = Response::builder().status(422).body(()).expect("valid");
        arrive("other-4").finish(&mut problem);
        assert_eq!(problem.headers()[X_REQUEST_ID], "other-4");
        assert_eq!(problem.headers()[VIA], "1.1 kneo");

        // One the proxy forwarded was recorded by it: not again, unmarked.
        let mut forwarded = Response::new(());
        forwarded.extensions_mut().insert(Recorded);
        arrive("first-1").finish(&mut forwarded);
        assert!(forwarded.extensions().get::<Recorded>().is_none());
        assert!(!forwarded.headers().contains_key(VIA));

        let id = |s: &str| Some(s.to_owned());
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            [
                (id("retry-2"), None, 201, 0, "replayed"),
                (id("retry-3"), id("req_upstream1"), 200, 0, "replayed"),
                (id("other-4"), None, 422, 0, "idempotency"),
            ]
        );
        let metrics = proxy.metrics().encode();
        for series in [
            r#"kneo_proxy_requests_total{outcome="replayed",class="2xx"} 2"#,
            r#"kneo_proxy_requests_total{outcome="idempotency",class="4xx"} 1"#,
            r#"kneo_proxy_requests_total{outcome="idempotency",class="5xx"} 0"#,
            "kneo_proxy_upstream_attempts_total 0",
        ] {
            assert!(metrics.contains(series), "{series} in\n{metrics}");
        }
    }

    #[test]
    fn outcome_names_are_distinct() {
        let mut names: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Outcome::ALL.len());
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "ALL is in declaration order");
        }
    }
}
