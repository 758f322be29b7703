//! [`RetryLayer`] and the [`Retry`] service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::Body;
use kneo_core::retry_rule::DEFAULT_RETRY_STATUSES;
use kneo_core::{BoxError, Error, DEFAULT_BODY_CAP};
use tower::retry::budget::Budget;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use super::backoff::Backoff;
use super::body::ReplayBody;
use super::policy::Attempts;
use super::policy::{Config, RetryPolicy};
use super::quota::RetryQuota;
use super::timeout::AttemptTimeout;
use crate::deadline::Deadline;
use crate::trace;
use pin_project_lite::pin_project;

/// Retries failed attempts; see the [module docs](super).
///
/// Every service made from one layer (and every clone of those) shares its
/// retry budget.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    config: Config,
}

impl RetryLayer {
    /// 3 attempts; 429, 502, 503 and 504; `Retry-After` up to 60 s; backoff
    /// 200 ms × 2ⁿ up to 10 s with full jitter; bodies replayable up to 64 KiB;
    /// no deadline, no per-attempt timeout; the default [`RetryQuota`]
    /// (a cost-weighted token bucket that bites only in storms).
    pub fn new() -> Self {
        RetryLayer {
            config: Config {
                max_attempts: 3,
                statuses: DEFAULT_RETRY_STATUSES.to_vec(),
                max_retry_after: Duration::from_secs(60),
                backoff: Backoff::new(),
                deadline: None,
                attempt_timeout: None,
                replay_cap: DEFAULT_BODY_CAP,
                budget: None,
                quota: Some(RetryQuota::new()),
            },
        }
    }

    /// Total attempts, the first included (1 means never retry; 0 is taken as 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// The statuses that are retried (default 429, 502, 503, 504).
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.statuses = statuses.into_iter().collect();
        self
    }

    /// The longest server hint that will be waited for (default 60 s). A
    /// longer one ends retrying at once; the error carries the hint.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// The backoff used when the server gives no hint.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// An overall limit on all attempts and the waits between them.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// A limit on each attempt, up to and including reading an error body.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// How much of a request body is kept for replay (default 64 KiB). A
    /// larger body is sent once and not retried.
    pub fn replay_cap(mut self, cap: usize) -> Self {
        self.config.replay_cap = cap;
        self
    }

    /// Limits retries to a share of traffic, e.g. tower's
    /// `TpsBudget::new(Duration::from_secs(10), 10, 0.2)`: each logical
    /// request deposits, each retry withdraws.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.config.budget = Some(Arc::new(budget));
        self
    }

    /// The cost-weighted retry quota (on by default: [`RetryQuota::new`]).
    pub fn quota(mut self, quota: RetryQuota) -> Self {
        self.config.quota = Some(quota);
        self
    }

    /// No retry quota and no budget: every request may use every attempt.
    pub fn no_budget(mut self) -> Self {
        self.config.quota = None;
        self.config.budget = None;
        self
    }
}

impl RetryLayer {
    /// This layer's retry decision as a `tower::retry::Policy`, for a stack
    /// built on tower's own `RetryLayer`. Requests must carry a
    /// [`ReplayBody`] (of this layer's `replay_cap`), which is what makes a
    /// body sendable again. kneo's [`Retry`] drives the same policy and adds
    /// the body wrapping, the deadline, the per-attempt timeout and the spans.
    ///
    /// ```
    /// use kneo::retry::{ReplayBody, RetryLayer};
    /// use tower::ServiceBuilder;
    ///
    /// let policy = RetryLayer::new().max_attempts(4).policy();
    /// let stack = ServiceBuilder::new()
    ///     .layer(tower::retry::RetryLayer::new(policy))
    ///     .layer(kneo::map_error::MapErrorLayer::new());
    /// # let _ = stack;
    /// ```
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::new(Arc::new(self.config.clone()))
    }

    /// The longest server hint waited for, and the deadline: what the
    /// throttle above must respect too.
    pub(crate) fn waits(&self) -> (Duration, Option<Duration>) {
        (self.config.max_retry_after, self.config.deadline)
    }

    /// The per-attempt timeout, for the client's body reads.
    #[cfg(feature = "client")]
    pub(crate) fn configured_attempt_timeout(&self) -> Option<Duration> {
        self.config.attempt_timeout
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let config = Arc::new(self.config.clone());
        Retry {
            inner: tower::retry::Retry::new(
                RetryPolicy::new(config.clone()),
                AttemptTimeout::new(inner, config.attempt_timeout),
            ),
            config,
        }
    }
}

/// The service [`RetryLayer`] makes: tower's `Retry` with a [`RetryPolicy`],
/// plus the request-body wrapping that makes replay possible.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: tower::retry::Retry<RetryPolicy, AttemptTimeout<S>>,
    config: Arc<Config>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        RetryLayer::new().layer(inner)
    }

    /// A [`RetryLayer`] with the default configuration.
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref().get_ref()
    }
}

pin_project! {
    /// Response future of [`Retry`]: tower's retry future, inside the
    /// logical request's span.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

/// tower's retry future for a [`Retry`] over `S`.
type TowerFuture<S, B> =
    tower::retry::future::ResponseFuture<RetryPolicy, AttemptTimeout<S>, Request<ReplayBody<B>>>;

impl<F, ResB> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, Error>>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        trace::record(this.span, &result);
        if !this.span.is_disabled() {
            let attempts = match &result {
                Ok(res) => res
                    .extensions()
                    .get::<Attempts>()
                    .map_or(1, Attempts::count),
                Err(e) => e.attempts(),
            };
            this.span.record("kneo.attempts", attempts);
        }
        Poll::Ready(result)
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = Error> + Clone,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<TowerFuture<S, B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(budget) = &self.config.budget {
            budget.deposit();
        }
        let cap = self.config.replay_cap;
        let mut req = req.map(|body| ReplayBody::new(body, cap));
        if let Some(deadline) = self.config.deadline {
            Deadline::start(&mut req, deadline);
        }
        let span = trace::request_span(&req);
        // The first attempt is sent from here: inside the span.
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture { inner, span }
    }
}
