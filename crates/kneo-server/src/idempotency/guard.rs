//! [`Guard`]: one request's claim, renewed while its work runs, completed or
//! released once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::Config;
use crate::record::RecordKey;
use crate::record::{Claim, Completed};
use crate::store::Store;

/// The claim of one request's work: completed or released once, renewed
/// while the work runs.
///
/// A response that could not be stored (the store failed) is stored again in
/// the background, with backoff, for as long as the claim's lease lives: the
/// handler has run, and a retry after the lease would run it again, so the
/// record must land while the claim still holds the key. A guard dropped
/// before either (its task was cancelled: the runtime is shutting down)
/// leaves the claim to its lease: the work may have been applied.
pub(crate) struct Guard<St: Store> {
    store: St,
    key: RecordKey,
    claim: Claim,
    ttl: Duration,
    /// When the lease ends, as of the last renewal.
    lease_ends: Arc<Mutex<Instant>>,
    state: GuardState,
}

enum GuardState {
    Claimed,
    Completing(Completed),
    Done,
}

impl<St: Store> Guard<St> {
    pub(crate) fn new(store: St, key: RecordKey, claim: Claim, config: &Config) -> Self {
        Guard {
            store,
            key,
            claim,
            ttl: config.ttl,
            lease_ends: Arc::new(Mutex::new(Instant::now() + config.lease)),
            state: GuardState::Claimed,
        }
    }

    /// The key the claim is on.
    pub(crate) fn key(&self) -> &RecordKey {
        &self.key
    }

    pub(crate) async fn release(&mut self) {
        let result = self.store.release(&self.key, &self.claim).await;
        self.state = GuardState::Done;
        log_release(&self.key, result);
    }

    /// Stores `record` for the claim, once; a second call does nothing.
    pub(crate) async fn complete(&mut self, record: Completed) {
        if !matches!(self.state, GuardState::Claimed) {
            return;
        }
        self.state = GuardState::Completing(record);
        let GuardState::Completing(record) = &self.state else {
            unreachable!("invariant: the state was just set");
        };
        let result = self
            .store
            .complete(&self.key, &self.claim, record, self.ttl)
            .await;
        let state = std::mem::replace(&mut self.state, GuardState::Done);
        match (result, state, tokio::runtime::Handle::try_current()) {
            (Err(error), GuardState::Completing(record), Ok(runtime)) => {
                tracing::warn!(
                    idempotency_key = %self.key.key(),
                    %error,
                    "could not store the response; retrying while the lease lasts"
                );
                self.complete_in_background(&runtime, record);
            }
            (result, _, _) => log_complete(&self.key, result),
        }
    }

    /// Renews the claim every third of `lease` for up to `max_hold`; never
    /// ends (the work it runs beside does).
    pub(crate) fn heartbeat(
        &self,
        lease: Duration,
        max_hold: Duration,
    ) -> impl Future<Output = ()> + Send {
        let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
        let lease_ends = self.lease_ends.clone();
        async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(lease / 3).await;
                if started.elapsed() >= max_hold {
                    tracing::warn!(
                        idempotency_key = %key.key(),
                        "the request has held its key for max_hold; no longer renewing its claim"
                    );
                    break;
                }
                let at = Instant::now();
                match store.renew(&key, &claim, lease).await {
                    Ok(true) => *lock(&lease_ends) = at + lease,
                    Ok(false) => {
                        tracing::error!(
                            idempotency_key = %key.key(),
                            "the claim ended before its work did; a retry may run the request again"
                        );
                        break;
                    }
                    Err(error) => tracing::warn!(
                        idempotency_key = %key.key(),
                        %error,
                        "could not renew the claim; trying again"
                    ),
                }
            }
            std::future::pending::<()>().await;
        }
    }

    /// Stores `record` on `runtime`, retrying while the lease lasts
    /// ([`complete_within_lease`]), and logs how it ended.
    fn complete_in_background(&self, runtime: &tokio::runtime::Handle, record: Completed) {
        let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
        let (ttl, lease_ends) = (self.ttl, *lock(&self.lease_ends));
        runtime.spawn(async move {
            let result =
                complete_within_lease(&store, &key, &claim, &record, ttl, lease_ends).await;
            log_complete(&key, result);
        });
    }
}

fn lock(m: &Mutex<Instant>) -> std::sync::MutexGuard<'_, Instant> {
    // Nothing panics while it is held.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stores `record` for `claim`, retrying store errors with backoff (10 ms,
/// doubling, at most 500 ms apart) until it is stored, the claim is found
/// gone (fenced), or the lease ends.
async fn complete_within_lease<St: Store>(
    store: &St,
    key: &RecordKey,
    claim: &Claim,
    record: &Completed,
    ttl: Duration,
    lease_ends: Instant,
) -> Result<bool, crate::store::StoreError> {
    let mut wait = Duration::from_millis(10);
    loop {
        match store.complete(key, claim, record, ttl).await {
            Err(_) if Instant::now() + wait < lease_ends => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

impl<St: Store> Drop for Guard<St> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, GuardState::Done) {
            GuardState::Done => {}
            GuardState::Claimed => tracing::warn!(
                idempotency_key = %self.key.key(),
                "request cancelled after it began; its key stays busy until the lease ends"
            ),
            GuardState::Completing(record) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    self.complete_in_background(&runtime, record);
                }
            }
        }
    }
}

fn log_release(key: &RecordKey, result: Result<bool, crate::store::StoreError>) {
    match result {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(idempotency_key = %key.key(), "claim had already ended; nothing to release")
        }
        Err(error) => tracing::warn!(
            idempotency_key = %key.key(),
            %error,
            "could not release the claim; the key stays busy until its lease ends"
        ),
    }
}

fn log_complete(key: &RecordKey, result: Result<bool, crate::store::StoreError>) {
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            idempotency_key = %key.key(),
            "the handler outlived its lease and the key was claimed again; its response was sent but not stored"
        ),
        Err(error) => tracing::error!(
            idempotency_key = %key.key(),
            %error,
            "could not store the response within its lease; once the lease ends a retry runs again"
        ),
    }
}
