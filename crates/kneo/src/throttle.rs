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
//! - When the last response of a partition said nothing is left and the
//!   reset is in the future, the next request of that partition waits until
//!   the reset before it is sent, logged at INFO (target `kneo::throttle`)
//!   with the request id. Other partitions are not held up.
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
//! - While no partition is blocked, a request costs one atomic load and a
//!   copy of its credential headers (the values share their bytes); nothing
//!   is hashed until a response carries rate-limit headers.
//!
//! `Retry-After` keeps precedence: it is the retry layer's business, and a
//! 429 is retried as it asks.
//!
//! # Partitions: per authority and per credential
//!
//! OpenAI's, Anthropic's and GitHub's limits are per key (or per
//! organisation), not per host: one key's spent quota says nothing of
//! another's. So a partition is the request's authority (`host:port`) and
//! its credential: the headers of [`Credentials`] (`Authorization`,
//! `Proxy-Authorization`, `X-Api-Key`, `Api-Key` by default; see
//! [`ThrottleLayer::credentials`]), written by
//! [`Credentials::write`](kneo_core::credential::Credentials::write), the
//! rule kneo-server's idempotency scope uses too. A request without any of
//! them is the authority's anonymous partition.
//!
//! The credential is never kept: the partition holds a 64-bit SipHash of it
//! (std's `RandomState`, keyed at random per [`layer`](ThrottleLayer)
//! call). The digest never leaves the process, so it needs no stable or
//! shared key, and the random key means a memory dump of the map cannot be
//! checked against a dictionary of keys. Two credentials colliding in 64
//! bits would share a throttle, never a response. Partitions whose reset
//! has passed are dropped whenever another is blocked, so the map holds
//! about as many entries as there are blocked partitions.
//!
//! Keys of one organisation sharing one limit each learn it on their own:
//! the upstream's refusal of the second key blocks that key too. To share
//! one throttle across every caller of an authority, as before, use
//! [`Credentials::none()`](kneo_core::credential::Credentials::none).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderMap, Request, Response};
use kneo_core::credential::Credentials;
use kneo_core::rate_limit::{self, RateLimit};
use kneo_core::{Error, Sent};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::deadline::Deadline;
use crate::partition;

/// Waits for an announced rate-limit reset; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ThrottleLayer {
    max_wait: Duration,
    deadline: Option<Duration>,
    credentials: Credentials,
    /// One record for every service this layer makes ([`Self::shared`]).
    state: Option<Arc<State>>,
}

impl ThrottleLayer {
    /// Waits up to 60 s for a reset; partitions by authority and the
    /// [default credential headers](kneo_core::credential::DEFAULT_HEADERS).
    pub fn new() -> Self {
        ThrottleLayer {
            max_wait: Duration::from_secs(60),
            deadline: None,
            credentials: Credentials::new(),
            state: None,
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

    /// Which headers (and cookies) tell callers apart: one partition per
    /// authority and credential (default [`Credentials::new`]: the four
    /// usual headers). [`Credentials::none`] shares one partition per
    /// authority among all callers.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        if self.state.is_some() {
            self = self.shared();
        }
        self
    }

    /// Makes every service this layer, and its clones, build share one
    /// record of the rate limits learned, as a [`Throttle`]'s own clones do
    /// (by default each service built has its own): for one client served
    /// by several stacks, such as a connection pool per thread.
    pub fn shared(mut self) -> Self {
        self.state = Some(Arc::new(State::new(self.credentials.clone())));
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
            state: self
                .state
                .clone()
                .unwrap_or_else(|| Arc::new(State::new(self.credentials.clone()))),
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
    kneo_core::define_inner_service_accessors!();
}

/// A partition: the authority, and a digest of the credential.
type Partition = (Option<Authority>, u64);

/// What the service learned, per partition.
#[derive(Debug)]
struct State {
    /// How many partitions are blocked: zero is the fast path.
    blocked: AtomicUsize,
    partitions: Mutex<HashMap<Partition, Blocked>>,
    /// Which headers carry the credential.
    credentials: Credentials,
    /// The random key of the credential digests.
    hasher: RandomState,
}

#[derive(Debug, Clone)]
struct Blocked {
    until: Instant,
    rate_limit: RateLimit,
}

impl State {
    fn new(credentials: Credentials) -> Self {
        State {
            blocked: AtomicUsize::new(0),
            partitions: Mutex::default(),
            credentials,
            hasher: RandomState::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Partition, Blocked>> {
        // Nothing panics while holding the lock; a poisoned map is still a map.
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether any partition is blocked: the one atomic load of the fast path.
    fn any_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire) > 0
    }

    /// The digest of the credential in `headers`.
    fn digest(&self, headers: &HeaderMap) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        self.credentials.write(headers, |bytes| hasher.write(bytes));
        hasher.finish()
    }

    /// How long a request to `partition` must wait, and what said so.
    fn wait(&self, partition: &Partition) -> Option<(Duration, RateLimit)> {
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

    /// Whether a response saying `rate_limit` changes anything: it blocks a
    /// partition, or may unblock one.
    fn would_learn(&self, rate_limit: &RateLimit) -> bool {
        blocks(rate_limit).is_some() || self.any_blocked()
    }

    /// Records what a response said of the partition's quota.
    fn learn(&self, partition: Partition, rate_limit: &RateLimit) {
        match blocks(rate_limit) {
            Some(reset) => {
                let mut map = self.lock();
                let now = Instant::now();
                map.retain(|_, blocked| blocked.until > now);
                map.insert(
                    partition,
                    Blocked {
                        until: now + reset,
                        rate_limit: rate_limit.clone(),
                    },
                );
                self.blocked.store(map.len(), Ordering::Release);
            }
            // Quota left (or a reset already due): nothing to wait for.
            None if self.any_blocked() => {
                let mut map = self.lock();
                map.remove(&partition);
                self.blocked.store(map.len(), Ordering::Release);
            }
            None => {}
        }
    }
}

/// How long a response saying `rate_limit` blocks its partition, if it does.
fn blocks(rate_limit: &RateLimit) -> Option<Duration> {
    rate_limit
        .reset_after()
        .filter(|reset| !reset.is_zero() && rate_limit.is_exhausted())
}

/// The credential of a request in flight, as the response future keeps it.
enum Credential {
    /// Copied, not hashed (the fast path): hashed only if the response
    /// carries rate-limit headers. Never printed.
    Unhashed(HeaderMap),
    /// Already hashed, to look the partition up.
    Hashed(u64),
}

impl Credential {
    fn digest(&self, state: &State) -> u64 {
        match self {
            Credential::Unhashed(headers) => state.digest(headers),
            Credential::Hashed(digest) => *digest,
        }
    }
}

/// The random extra wait that spreads waiters out past the reset instant.
fn jitter(wait: Duration) -> Duration {
    let spread = (wait / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    spread.mul_f64(fastrand::f64())
}

/// The authority of a partition, as printed: `host:port` (the `Client` has
/// taken any userinfo off by then).
fn authority(authority: Option<&Authority>) -> &str {
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
        let authority = partition::authority(&req).cloned();
        if !self.state.any_blocked() {
            let credential = Credential::Unhashed(self.state.credentials.select(req.headers()));
            return ResponseFuture {
                state: Phase::Calling {
                    future: self.inner.call(req),
                },
                shared: self.state.clone(),
                authority,
                credential,
            };
        }
        let digest = self.state.digest(req.headers());
        let credential = Credential::Hashed(digest);
        let partition = (authority, digest);
        let Some((wait, rate_limit)) = self.state.wait(&partition) else {
            return ResponseFuture {
                state: Phase::Calling {
                    future: self.inner.call(req),
                },
                shared: self.state.clone(),
                authority: partition.0,
                credential,
            };
        };
        let wait = wait + jitter(wait);
        let sent = Sent::of(&req);
        let past_deadline = Deadline::would_pass(&req, wait);
        if wait > self.layer.max_wait || past_deadline {
            let err = Error::throttled(wait, Some(rate_limit), sent);
            return ResponseFuture {
                state: Phase::Refused { error: Some(err) },
                shared: self.state.clone(),
                authority: partition.0,
                credential,
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
            authority: partition.0,
            credential,
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
        credential: Credential,
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
            .field("authority", &authority(self.authority.as_ref()))
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
                    let learn = |rl: &RateLimit| {
                        if this.shared.would_learn(rl) {
                            let digest = this.credential.digest(this.shared);
                            this.shared.learn((this.authority.clone(), digest), rl);
                        }
                    };
                    match &mut result {
                        Ok(res) => {
                            if let Some(rl) = rate_limit::from_headers(res.headers()) {
                                learn(&rl);
                                res.extensions_mut().insert(rl);
                            }
                        }
                        Err(e) => {
                            if let Some(rl) = e.rate_limit() {
                                learn(rl);
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

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn exhausted(reset_secs: u64) -> RateLimit {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
        headers.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::try_from(format!("{reset_secs}s")).expect("valid"),
        );
        let rl = rate_limit::from_headers(&headers).expect("OpenAI's headers");
        assert!(rl.is_exhausted());
        rl
    }

    fn key(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static(value));
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_credential_blocks_only_itself_and_expired_partitions_go() {
        let state = State::new(Credentials::new());
        let host: Option<Authority> = Some(Authority::from_static("api.example:443"));
        let a = (host.clone(), state.digest(&key("Bearer sk-A")));
        let b = (host.clone(), state.digest(&key("Bearer sk-B")));
        assert_ne!(a.1, b.1);
        assert_eq!(
            a.1,
            state.digest(&key("Bearer sk-A")),
            "one digest per credential"
        );
        assert!(!state.any_blocked());

        state.learn(a.clone(), &exhausted(360));
        assert!(state.any_blocked());
        assert!(state
            .wait(&a)
            .is_some_and(|(w, _)| w > Duration::from_secs(350)));
        assert!(state.wait(&b).is_none(), "sk-B is not held up by sk-A");
        let other_host = (Some(Authority::from_static("other:443")), a.1);
        assert!(state.wait(&other_host).is_none(), "nor is sk-A elsewhere");

        // Once sk-A's reset has passed, blocking sk-B drops sk-A's entry.
        tokio::time::advance(Duration::from_secs(361)).await;
        state.learn(b.clone(), &exhausted(60));
        assert_eq!(state.lock().len(), 1);
        assert!(state.wait(&a).is_none());
        assert!(state.wait(&b).is_some());
    }

    #[test]
    fn the_map_keeps_digests_not_credentials() {
        let state = State::new(Credentials::new());
        state.learn(
            (None, state.digest(&key("Bearer sk-secret"))),
            &exhausted(60),
        );
        let debug = format!("{state:?}");
        assert!(!debug.contains("sk-secret"), "{debug}");
    }
}
