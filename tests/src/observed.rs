//! [`Observed`]: a store that tells a test what it answered.

use std::sync::Arc;
use std::time::Duration;

use kneo_server::idempotency::{Claim, Completed, Fingerprint, RecordKey};
use kneo_server::store::{Acquire, StoreError};
use kneo_server::Store;

/// What a store was just asked, as [`Observed`] reports it.
#[derive(Debug)]
pub enum Step<'a> {
    /// A claim, and what the store answered.
    Claimed(&'a Result<Acquire, StoreError>),
    /// A response recorded (or refused).
    Completed,
    /// A claim released.
    Released,
}

/// Wraps a store: every call goes to it unchanged, and `watch` sees the
/// store and the [`Step`] after each claim, completion and release (a
/// renewal changes nothing a test counts).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use kneo_server::store::Acquire;
/// use kneo_server::MemoryStore;
/// use kneo_tests::observed::{Observed, Step};
///
/// let waiting = Arc::new(AtomicUsize::new(0));
/// let counted = waiting.clone();
/// let store = Observed::new(MemoryStore::new(), move |_, step| {
///     if let Step::Claimed(Ok(Acquire::InFlight(_))) = step {
///         counted.fetch_add(1, Ordering::SeqCst);
///     }
/// });
/// # let _ = store;
/// ```
pub struct Observed<St> {
    inner: St,
    watch: Watch<St>,
}

/// What [`Observed`] calls after each step.
type Watch<St> = Arc<dyn Fn(&St, Step<'_>) + Send + Sync>;

impl<St: std::fmt::Debug> std::fmt::Debug for Observed<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<St> Observed<St> {
    /// `inner`, with `watch` called after each claim, completion and release.
    pub fn new(inner: St, watch: impl Fn(&St, Step<'_>) + Send + Sync + 'static) -> Self {
        Observed {
            inner,
            watch: Arc::new(watch),
        }
    }
}

impl<St: Clone> Clone for Observed<St> {
    fn clone(&self) -> Self {
        Observed {
            inner: self.inner.clone(),
            watch: self.watch.clone(),
        }
    }
}

impl<St: Store> Store for Observed<St> {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Acquire, StoreError> {
        let acquired = self.inner.claim(key, fingerprint, lease).await;
        (self.watch)(&self.inner, Step::Claimed(&acquired));
        acquired
    }

    async fn complete(
        &self,
        key: &RecordKey,
        claim: &Claim,
        record: &Completed,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result = self.inner.complete(key, claim, record, ttl).await;
        (self.watch)(&self.inner, Step::Completed);
        result
    }

    async fn renew(
        &self,
        key: &RecordKey,
        claim: &Claim,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.renew(key, claim, lease).await
    }

    async fn release(&self, key: &RecordKey, claim: &Claim) -> Result<bool, StoreError> {
        let result = self.inner.release(key, claim).await;
        (self.watch)(&self.inner, Step::Released);
        result
    }
}
