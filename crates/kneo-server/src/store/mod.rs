//! Where idempotency records live: the [`Store`] contract, [`MemoryStore`]
//! for one process, and `RedisStore` (feature `redis`) for a fleet.
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use kneo_server::idempotency::{Completed, Fingerprint, Completion, RecordKey, Scope};
//! use kneo_server::store::{Acquire, MemoryStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new();
//! let key = RecordKey::new(Scope::anonymous(), "order-1");
//! let fp = Fingerprint::of(&Method::POST, "/orders", b"{}");
//! let lease = Duration::from_secs(60);
//!
//! let Acquire::Claimed(claim) = store.claim(&key, fp, lease).await.unwrap() else { panic!() };
//! // While it runs, the key is busy.
//! assert!(matches!(store.claim(&key, fp, lease).await.unwrap(), Acquire::InFlight(_)));
//! // Done: the record replaces the claim, for a day.
//! let done = Completed::new(fp, Completion::NotStored(http::StatusCode::OK));
//! assert!(store.complete(&key, &claim, &done, Duration::from_secs(86_400)).await.unwrap());
//! assert_eq!(store.claim(&key, fp, lease).await.unwrap(), Acquire::Completed(done));
//! # }
//! ```
//!
//! # Why a lease and a TTL, and why a fencing token
//!
//! An in-flight claim only needs to outlive the handler; a completed record
//! must outlive every retry a client may make. Tying both to one 24-hour
//! expiry would let a crashed worker lock a key for a day, so a claim has a
//! short **lease** (60 s by default) and a completed record a long **TTL**
//! (24 h). A handler that outlives its lease has lost the key: another request
//! may have claimed it since. The **fencing token** the claim carries makes
//! its late [`complete`](Store::complete) or [`release`](Store::release) a
//! no-op instead of overwriting the newer claim.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use kneo_core::BoxError;

#[cfg(any(feature = "redis", feature = "postgres"))]
use crate::record::Record;
use crate::record::{Claim, Completed, Fingerprint, RecordKey};

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{MemoryStore, DEFAULT_MAX_ENTRIES};
#[cfg(feature = "postgres")]
pub(crate) use postgres::{redacted, secs};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, DEFAULT_POSTGRES_TIMEOUT, MIGRATION};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder, DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_TIMEOUT};

/// What [`Store::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acquire {
    /// The key was free (or its last claim's lease had ended): it is now
    /// claimed by the caller, who must [`complete`](Store::complete) or
    /// [`release`](Store::release) it with this claim.
    Claimed(Claim),
    /// Another request holds the key and is still running (its lease has not
    /// ended); this is its fingerprint.
    InFlight(Fingerprint),
    /// A request with this key has finished; this is its record.
    Completed(Completed),
}

impl Acquire {
    /// What a claim found when the key was held: the holder's [`Record`],
    /// read from its encoding (a store that keeps records encoded returns
    /// this when its claim did not take). [`StoreError::corrupt`] when the
    /// bytes are not a record this version can read.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn held(encoded: &[u8]) -> Result<Acquire, StoreError> {
        match Record::decode(encoded).map_err(StoreError::corrupt)? {
            Record::InFlight(holder) => Ok(Acquire::InFlight(holder.fingerprint())),
            Record::Completed(done) => Ok(Acquire::Completed(done)),
        }
    }
}

/// A store could not do what was asked: it is unreachable, timed out, full,
/// or holds a record it cannot read.
///
/// Every such error makes the layer answer `503` with code
/// `idempotency_store_unavailable` (unless it was built with `fail_open`).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreErrorKind {
    Unavailable,
    Full,
    Corrupt,
}

impl StoreError {
    /// The backend failed: a connection error, a timeout, an error reply.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        StoreError {
            kind: StoreErrorKind::Unavailable,
            source: Some(source.into()),
        }
    }

    /// Every slot holds an in-flight claim; nothing can be evicted.
    pub fn full() -> Self {
        StoreError {
            kind: StoreErrorKind::Full,
            source: None,
        }
    }

    /// The stored value is not a record this version can read.
    pub fn corrupt(source: impl Into<BoxError>) -> Self {
        StoreError {
            kind: StoreErrorKind::Corrupt,
            source: Some(source.into()),
        }
    }

    /// `true` when the store is full of in-flight claims.
    pub fn is_full(&self) -> bool {
        self.kind == StoreErrorKind::Full
    }

    /// `true` when a stored value could not be decoded.
    pub fn is_corrupt(&self) -> bool {
        self.kind == StoreErrorKind::Corrupt
    }

    /// `true` when the store timed out (directly or in the source chain).
    pub fn is_timeout(&self) -> bool {
        let mut next: Option<&(dyn StdError + 'static)> = self.source();
        while let Some(e) = next {
            if e.is::<tokio::time::error::Elapsed>()
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return true;
            }
            #[cfg(feature = "redis")]
            if e.downcast_ref::<::redis::RedisError>()
                .is_some_and(::redis::RedisError::is_timeout)
            {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StoreErrorKind::Unavailable => f.write_str("idempotency store unavailable")?,
            StoreErrorKind::Full => {
                return f.write_str("idempotency store full of in-flight claims");
            }
            StoreErrorKind::Corrupt => f.write_str("idempotency store holds a malformed record")?,
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Storage for idempotency records, shared by every request through a layer
/// (and, for a shared store, by every server).
///
/// The layer clones the store once per layer and calls it from many tasks at
/// once; one request makes at most one `claim` followed by any number of
/// `renew`s and at most one `complete` or `release` with the claim it got (a
/// `complete` may be retried after a store error, so it must be safe to
/// repeat).
///
/// # Contract
///
/// A store is keyed by [`RecordKey`] (scope and key; the request fingerprint
/// is **not** part of the key).
///
/// [`claim`](Store::claim) MUST be atomic: of any number of concurrent claims
/// on a free key — from this process or, for a shared store, any other —
/// exactly one returns [`Acquire::Claimed`], with a [`Claim`] whose fencing
/// token differs from that of every earlier claim on the key. A claim holds
/// for `lease`; after that the key is free again, and the next `claim` MUST
/// succeed with a new token. While a claim holds, `claim` MUST return
/// [`Acquire::InFlight`] with the holder's fingerprint; once the key is
/// completed, [`Acquire::Completed`] with the record, until its TTL ends.
/// `claim` MUST NOT compare fingerprints: that is the layer's decision.
///
/// [`complete`](Store::complete) MUST replace the claim with the record, to
/// live for `ttl`, **only if** that very claim still holds (same token, lease
/// not ended), atomically with that check, and return `Ok(true)`; otherwise it
/// MUST change nothing and return `Ok(false)`.
///
/// [`release`](Store::release) MUST remove the claim **only if** it still
/// holds, returning `Ok(true)`; otherwise change nothing and return
/// `Ok(false)`. A released key is free: the next `claim` succeeds.
///
/// [`renew`](Store::renew) MUST extend the claim so that it holds for `lease`
/// from now, **only if** that very claim still holds, atomically with that
/// check, and return `Ok(true)`; otherwise change nothing and return
/// `Ok(false)`. The layer renews a claim on a heartbeat while its work runs,
/// so that only a crashed or wedged process lets a lease end.
///
/// A store MAY drop a completed record before its TTL ends (to stay within a
/// memory bound, say); that only weakens replay to "run again". It MUST NOT
/// drop an in-flight claim before its lease ends: that would let a second
/// request run concurrently with the first (a Redis that evicts keys breaks
/// this, so `RedisStore` refuses one). A store that bounds its memory MUST
/// NOT let one scope's records push out another's while the pusher holds
/// records of its own, and SHOULD drop claims whose lease ended before any
/// live record.
///
/// A store MUST treat the [`RecordKey`]'s scope as an opaque digest and MAY
/// show it in names (a Redis key, a table row): the default scope is an
/// HMAC under the deployment's secret, so a name never reveals, and cannot be
/// checked against, the credential it was made from. A store MUST NOT keep
/// anything of the request but the key, the fingerprint and the record.
///
/// A `claim` that returns an error MUST NOT leave a claim behind that nobody
/// holds: if the backend may still execute it (a timed-out command), the
/// store takes that very claim back (fenced by its token) once it lands.
///
/// # Errors
///
/// Any [`StoreError`] means "the store did not answer". The layer then fails
/// closed (`503`), so an implementation MUST return an error rather than guess,
/// and SHOULD bound each call in time so that an unreachable backend fails
/// fast. A `complete` or `release` that returns an error MAY have taken effect.
pub trait Store: Clone + Send + Sync + 'static {
    /// Claims `key` for the request with `fingerprint` for `lease`, or
    /// reports who holds it or how it ended.
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Acquire, StoreError>> + Send;

    /// Replaces `claim` with `record` for `ttl`, if `claim` still holds.
    fn complete(
        &self,
        key: &RecordKey,
        claim: &Claim,
        record: &Completed,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Makes `claim` hold for `lease` from now, if it still holds.
    fn renew(
        &self,
        key: &RecordKey,
        claim: &Claim,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes `claim`, if it still holds, so that the next request runs.
    fn release(
        &self,
        key: &RecordKey,
        claim: &Claim,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
