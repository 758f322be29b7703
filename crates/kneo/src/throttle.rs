//! Slow down before the 429: wait for the reset the server announced instead
//! of sending a request it has said it will refuse.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use kneo::throttle::ThrottleLayer;
//! use kneo::{codes, ErrorKind};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An API that says its quota is spent for the next ten minutes.
//! let calls = Arc::new(AtomicU32::new(0));
//! let api = {
//!     let calls = calls.clone();
//!     service_fn(move |_req: Request<()>| {
//!         calls.fetch_add(1, Ordering::SeqCst);
//!         let res = Response::builder()
//!             .header("ratelimit-policy", r#""hourly";q=100;w=3600"#)
//!             .header("ratelimit", r#""hourly";r=0;t=600"#)
//!             .body(())
//!             .unwrap();
//!         async move { Ok::<_, kneo::Error>(res) }
//!     })
//! };
//! let svc = ThrottleLayer::new().max_wait(Duration::from_secs(60)).layer(api);
//!
//! let first = svc.clone().oneshot(Request::get("http://api.example/x").body(()).unwrap()).await.unwrap();
//! assert!(first.extensions().get::<kneo::RateLimit>().unwrap().is_exhausted());
//!
//! // Ten minutes is more than the caller waits: refused here, not sent.
//! let err = svc.oneshot(Request::get("http://api.example/y").body(()).unwrap()).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::RateLimited);
//! assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
//! assert!(err.retry_after().unwrap() > Duration::from_secs(590));
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # Where it goes
//!
//! Above the [retry layer](crate::retry), once per logical request (a wait
//! here is not cut short by the per-attempt timeout), below the
//! [request id](crate::request_id) and [idempotency](crate::idempotency)
//! layers so its log lines and errors carry the id. [`ClientLayer`](crate::ClientLayer)
//! puts it there.
//!
//! # What it does
//!
//! - Every response, and every error that carried a response, is read for
//!   rate-limit headers ([`kneo_core::rate_limit`]: the IETF draft's fields,
//!   GitHub's, OpenAI's, Anthropic's). A success response gets the parsed
//!   [`RateLimit`] in its extensions.
//! - When the last response of a partition (the request's authority,
//!   `host:port`) said nothing is left and the reset is in the future, the
//!   next request waits until the reset before it is sent, logged at INFO
//!   (target `kneo::throttle`) with the request id.
//! - A wait longer than [`max_wait`](ThrottleLayer::max_wait) (the retry
//!   layer's `max_retry_after`, 60 s by default, inside `ClientLayer`), or one
//!   that would pass the request's deadline, is not waited: the request fails
//!   at once, unsent, as [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited)
//!   with code [`RATE_LIMITED_LOCALLY`](crate::codes::RATE_LIMITED_LOCALLY)
//!   and [`retry_after()`](crate::Error::retry_after) set.
//! - Waiters do not all rush at the reset instant: each adds a random jitter
//!   of up to a tenth of its wait (at least 100 ms, at most 1 s).
//! - Clones of one service share what they learned; services made by
//!   separate `layer` calls do not.
//! - While no server sends these headers, a request costs one atomic load.
//!
//! `Retry-After` keeps precedence: it is the retry layer's business, and a
//! 429 is retried as it asks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use kneo_core::rate_limit::{self, RateLimit};
use kneo_core::Error;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::deadline::Deadline;
use crate::sent::SentHeaders;

/// Waits for an announced rate-limit reset; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ThrottleLayer {
    max_wait: Duration,
    deadline: Option<Duration>,
}

impl ThrottleLayer {
    /// Waits up to 60 s for a reset.
    pub fn new() -> Self {
        ThrottleLayer {
            max_wait: Duration::from_secs(60),
            deadline: None,
        }
    }

    /// The longest wait for a reset; a longer one fails at once, unsent.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Starts the logical request's deadline here, so a wait counts against
    /// it (`ClientLayer` passes the retry layer's deadline).
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }
}

impl Default for ThrottleLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            layer: self.clone(),
            state: Arc::default(),
        }
    }
}

/// The service [`ThrottleLayer`] makes. Clones share their state.
#[derive(Debug, Clone)]
pub struct Throttle<S> {
    inner: S,
    layer: ThrottleLayer,
    state: Arc<State>,
}

impl<S> Throttle<S> {
    define_inner_service_accessors!();
}

/// What the service learned, per partition.
#[derive(Debug, Default)]
struct State {
    /// How many partitions are blocked: zero is the fast path.
    blocked: AtomicUsize,
    partitions: Mutex<HashMap<String, Blocked>>,
}

#[derive(Debug, Clone)]
struct Blocked {
    until: Instant,
    rate_limit: RateLimit,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Blocked>> {
        // Nothing panics while holding the lock; a poisoned map is still a map.
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long a request to `partition` must wait, and what said so.
    fn wait(&self, partition: &str) -> Option<(Duration, RateLimit)> {
        if self.blocked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut map = self.lock();
        let blocked = map.get(partition)?;
        let now = Instant::now();
        if blocked.until <= now {
            map.remove(partition);
            self.blocked.store(map.len(), Ordering::Release);
            return None;
        }
        Some((blocked.until - now, blocked.rate_limit.clone()))
    }

    /// Records what a response said of the partition's quota.
    fn learn(&self, partition: &str, rate_limit: &RateLimit) {
        let reset = rate_limit.reset_after().filter(|r| !r.is_zero());
        match reset {
            Some(reset) if rate_limit.is_exhausted() => {
                let mut map = self.lock();
                map.insert(
                    partition.to_owned(),
                    Blocked {
                        until: Instant::now() + reset,
                        rate_limit: rate_limit.clone(),
                    },
                );
                self.blocked.store(map.len(), Ordering::Release);
            }
            // Quota left (or a reset already due): nothing to wait for.
            _ if self.blocked.load(Ordering::Acquire) > 0 => {
                let mut map = self.lock();
                map.remove(partition);
                self.blocked.store(map.len(), Ordering::Release);
            }
            _ => {}
        }
    }
}

/// The random extra wait that spreads waiters out past the reset instant.
fn jitter(wait: Duration) -> Duration {
    let spread = (wait / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    spread.mul_f64(fastrand::f64())
}

/// The partition a request belongs to: its authority, `host:port` (the
/// `Client` has taken any userinfo off by then).
fn partition(authority: Option<&Authority>) -> &str {
    authority.map_or("", Authority::as_str)
}

impl<S, B, ResB> Service<Request<B>> for Throttle<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error> + Clone,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(deadline) = self.layer.deadline {
            Deadline::start(&mut req, deadline);
        }
        let authority = req.uri().authority().cloned();
        let Some((wait, rate_limit)) = self.state.wait(partition(authority.as_ref())) else {
            return ResponseFuture {
                state: Phase::Calling {
                    future: self.inner.call(req),
                },
                shared: self.state.clone(),
                authority,
            };
        };
        let wait = wait + jitter(wait);
        let sent = SentHeaders::capture(&req).into_sent();
        let past_deadline = Deadline::of(&req).is_some_and(|at| Instant::now() + wait >= at);
        if wait > self.layer.max_wait || past_deadline {
            let err = Error::throttled(wait, Some(rate_limit), sent);
            return ResponseFuture {
                state: Phase::Refused { error: Some(err) },
                shared: self.state.clone(),
                authority,
            };
        }
        tracing::info!(
            target: "kneo::throttle",
            request_id = sent.request_id().unwrap_or(""),
            policy = rate_limit.policy().unwrap_or(""),
            "rate limit exhausted; waiting {:.2}s for the reset before sending",
            wait.as_secs_f64(),
        );
        // The service polled ready goes with the request; a clone stays.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: Phase::Waiting {
                sleep: Box::pin(tokio::time::sleep(wait)),
                parked: Some(Box::new((service, req))),
            },
            shared: self.state.clone(),
            authority,
        }
    }
}

pin_project! {
    /// Response future of [`Throttle`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: Phase<S, B>,
        shared: Arc<State>,
        authority: Option<Authority>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<S, B>
    where
        S: Service<Request<B>>,
    {
        Calling { #[pin] future: S::Future },
        // Boxed: only a throttled request pays for carrying its service.
        Waiting {
            sleep: Pin<Box<Sleep>>,
            parked: Option<Box<(S, Request<B>)>>,
        },
        Refused { error: Option<Error> },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("partition", &partition(self.authority.as_ref()))
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Error>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                PhaseProj::Calling { future } => {
                    let mut result = ready!(future.poll(cx));
                    match &mut result {
                        Ok(res) => {
                            if let Some(rl) = rate_limit::from_headers(res.headers()) {
                                this.shared.learn(partition(this.authority.as_ref()), &rl);
                                res.extensions_mut().insert(rl);
                            }
                        }
                        Err(e) => {
                            if let Some(rl) = e.rate_limit() {
                                this.shared.learn(partition(this.authority.as_ref()), rl);
                            }
                        }
                    }
                    return Poll::Ready(result);
                }
                PhaseProj::Waiting { sleep, parked } => {
                    ready!(sleep.as_mut().poll(cx));
                    let (mut service, request) =
                        *parked.take().expect("invariant: the wait ends once");
                    // The service was polled ready before the wait began.
                    let future = service.call(request);
                    this.state.set(Phase::Calling { future });
                }
                PhaseProj::Refused { error } => {
                    let err = error
                        .take()
                        .expect("invariant: a refused future is polled to completion once");
                    return Poll::Ready(Err(err));
                }
            }
        }
    }
}
