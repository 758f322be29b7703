//! [`IdempotencyLayer`]: the configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tower_layer::Layer;

use super::config::{Config, MAX_DURATION, MIN_LEASE};
use super::service::Idempotency;
use crate::record::scope::MakeScope;

/// Enforces `Idempotency-Key` on a server: a keyed POST or PATCH runs once;
/// its retries get the stored response. See the [module docs](super).
#[derive(Clone)]
pub struct IdempotencyLayer<St> {
    store: St,
    config: Arc<Config>,
}

impl<St: fmt::Debug> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl<St> IdempotencyLayer<St> {
    /// A layer keeping its records in `store`, with the defaults: POST and
    /// PATCH, key optional, scope from every credential header, 1 MiB request and
    /// response caps, 60 s lease, 24 h TTL, fail closed.
    pub fn new(store: St) -> Self {
        IdempotencyLayer {
            store,
            config: Arc::new(Config::default()),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The methods whose keyed requests are enforced (default POST and
    /// PATCH); every other method passes through untouched, key or not.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config().methods = methods.into_iter().collect();
        self
    }

    /// Refuses requests of those methods without a key: `400`, code
    /// `idempotency_key_missing`. By default they pass through.
    pub fn require(mut self) -> Self {
        self.config().require = true;
        self
    }

    /// Whose key it is (default [`CredentialScope::new`](crate::idempotency::CredentialScope::new): every credential
    /// header, keyed with the public default secret; give a shared store
    /// `CredentialScope::new().secret(..)`).
    pub fn scope(mut self, scope: impl MakeScope) -> Self {
        self.config().scope = Arc::new(scope);
        self
    }

    /// The largest keyed request body read (default 1 MiB); larger → `413`,
    /// handler not called.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config().max_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB). A larger response
    /// still goes to its caller in full; its key is then answered `410`.
    pub fn max_response(mut self, bytes: usize) -> Self {
        self.config().max_response = bytes;
        self
    }

    /// How long a claim holds without renewal (default 60 s), kept between
    /// [`MIN_LEASE`] and [`MAX_DURATION`].
    ///
    /// While the request's work runs, the layer renews the claim every third
    /// of the lease (for up to [`max_hold`](Self::max_hold)), so the lease
    /// only bounds how long a key stays busy after the process holding it
    /// crashed or stopped renewing: a shorter lease frees such keys sooner,
    /// at the cost of more renewals.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config().lease = lease.clamp(MIN_LEASE, MAX_DURATION);
        self
    }

    /// How long a completed record is kept (default 24 h), at most
    /// [`MAX_DURATION`]; zero keeps nothing (every retry runs again).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config().ttl = ttl.min(MAX_DURATION);
        self
    }

    /// How long one request's work may keep its claim alive by renewing it
    /// (default 15 minutes, at most [`MAX_DURATION`]).
    ///
    /// Past it the layer stops renewing: the work goes on, but once the lease
    /// ends a retry may run the request again beside it. Set it above the
    /// slowest request you serve (a long download or stream included).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.config().max_hold = max_hold.min(MAX_DURATION);
        self
    }

    /// Lets a duplicate that arrives while the first request with its key
    /// still runs wait up to `max` for that run to end, and answer with its
    /// response (or run, if the first gave its key back), instead of `409`
    /// at once (default zero: no waiting; at most [`MAX_DURATION`]).
    ///
    /// The cost: a waiting duplicate holds its connection and asks the store
    /// again 10 ms, 20 ms, … then every 200 ms (about 5 store calls a second
    /// per waiter; for Redis, one `SET NX GET` each). A caller that sees the
    /// `409` and retries after its `Retry-After` costs one call per retry
    /// instead. Worth it for callers that do not retry a `409`.
    pub fn wait_for_first(mut self, max: Duration) -> Self {
        self.config().wait_for_first = max.min(MAX_DURATION);
        self
    }

    /// When the store is down, runs the handler **without** a claim instead
    /// of answering `503`.
    ///
    /// Availability over safety: while the store is down, a retried request
    /// may run twice and nothing is replayed. Each such request is logged at
    /// WARN. The default is to fail closed.
    pub fn fail_open(mut self) -> Self {
        self.config().fail_open = true;
        self
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }
}

impl<S, St> Idempotency<S, St> {
    /// A layer with the default configuration (same as [`IdempotencyLayer::new`]).
    pub fn layer(store: St) -> IdempotencyLayer<St> {
        IdempotencyLayer::new(store)
    }
}

impl<S, St: Clone> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_parts(inner, self.store.clone(), self.config.clone())
    }
}
