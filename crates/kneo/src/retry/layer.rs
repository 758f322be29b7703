//! [`RetryLayer`] and the [`Retry`] service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::Body;
use kneo_core::retry_rule::DEFAULT_RETRY_STATUSES;
use kneo_core::{BoxError, Error, Sent, DEFAULT_BODY_CAP};
use tokio::time::Sleep;
use tower::retry::budget::Budget;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use super::backoff::Backoff;
use super::body::ReplayBody;
use super::policy::{Attempted, Attempts, Config, RetryPolicy};
use super::quota::RetryQuota;
use super::timeout::AttemptTimeout;
use crate::deadline::Deadline;
use crate::request::copy_attempt;
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

    /// The per-attempt timeout as configured (`None`: none), for what
    /// reads on after the stack answers (a client's body read, a proxy's
    /// upgrade handshake).
    pub fn attempt_timeout_value(&self) -> Option<Duration> {
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
            inner: AttemptTimeout::new(inner, config.attempt_timeout),
            template: None,
            policy: RetryPolicy::new(config),
        }
    }
}

/// The service [`RetryLayer`] makes: it drives a [`RetryPolicy`] (the one
/// tower's `Retry` can drive too) with a future of its own, and wraps
/// request bodies so they can be sent again.
///
/// The first attempt goes to the service that was polled ready. A request
/// that may be sent again keeps a copy of itself for the next attempt
/// (none when `max_attempts` is 1); later attempts go to a clone of the
/// service, made from one shared template when an attempt has failed, not
/// kept by every request as tower's `Retry` does.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: AttemptTimeout<S>,
    /// A clone of `inner` that later attempts clone from: made on the first
    /// call (the service is `Clone` only where it is called).
    template: Option<Arc<AttemptTimeout<S>>>,
    /// The policy every request starts from; clones share its configuration
    /// and quota.
    policy: RetryPolicy,
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
        self.inner.get_ref()
    }
}

pin_project! {
    /// Response future of [`Retry`]: the attempts of one logical request and
    /// the waits between them, inside the request's span.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future>,
        plan: Plan<S, B>,
        policy: RetryPolicy,
        span: Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Waiting { #[pin] sleep: Sleep },
        // The wait is over: the next attempt's service is being readied.
        Readying,
    }
}

/// Whether, and how, a request can be sent again.
enum Plan<S, B> {
    /// Never: its identity is all the policy needs.
    Once(Sent),
    /// Boxed: only the retry path pays for carrying it.
    Again(Box<Again<S, B>>),
}

struct Again<S, B> {
    /// The copy the next attempt sends.
    request: Request<ReplayBody<B>>,
    template: Arc<S>,
    /// The template's clone later attempts are called on.
    service: Option<S>,
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>, Error = Error> + Clone,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let result = loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    let attempted = match &mut *this.plan {
                        Plan::Once(sent) => Attempted::Once(sent),
                        Plan::Again(again) => Attempted::Again(&mut again.request),
                    };
                    match this.policy.decide(attempted, &result) {
                        Some(wait) => this.state.set(State::Waiting {
                            sleep: tokio::time::sleep(wait),
                        }),
                        None => break result,
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Plan::Again(again) = &mut *this.plan else {
                        unreachable!("invariant: only a request kept to send again waits");
                    };
                    let Again {
                        request,
                        template,
                        service,
                    } = &mut **again;
                    let service = service.get_or_insert_with(|| S::clone(template));
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        break Err(e);
                    }
                    let next = copy_attempt(request);
                    let future = service.call(std::mem::replace(request, next));
                    this.state.set(State::Calling { future });
                }
            }
        };
        let kept = match &*this.plan {
            Plan::Again(again) => Some(&again.request),
            Plan::Once(_) => None,
        };
        let result = this.policy.finish(kept, result);
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
    type Future = ResponseFuture<AttemptTimeout<S>, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = self.policy.config();
        if let Some(budget) = &config.budget {
            budget.deposit();
        }
        let mut req = req.map(|body| ReplayBody::new(body, config.replay_cap));
        if let Some(deadline) = config.deadline {
            Deadline::start(&mut req, deadline);
        }
        let plan = if config.max_attempts > 1 {
            let inner = &self.inner;
            let template = self
                .template
                .get_or_insert_with(|| Arc::new(inner.clone()))
                .clone();
            Plan::Again(Box::new(Again {
                request: copy_attempt(&req),
                template,
                service: None,
            }))
        } else {
            Plan::Once(Sent::of(&req))
        };
        let span = trace::request_span(&req);
        // The first attempt is sent from here: inside the span.
        let future = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            state: State::Calling { future },
            plan,
            policy: self.policy.clone(),
            span,
        }
    }
}
