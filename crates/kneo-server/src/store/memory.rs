//! [`MemoryStore`]: records in this process, bounded.

use std::collections::{hash_map, BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Acquire, Store, StoreError};
use crate::idempotency::{Claim, Completed, FencingToken, Fingerprint, RecordKey};

/// The default bound on records kept.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// An in-process [`Store`]: a map behind one mutex, with expiry, bounded.
///
/// Right for a single server (or tests). Records die with the process, and two
/// processes do not see each other's claims: behind a load balancer, use
/// `RedisStore`.
///
/// **Bound.** At most [`max_entries`](MemoryStore::max_entries) records (in-flight
/// claims and completed records) are kept. When a new claim finds the store
/// full, it evicts the oldest *completed* record (with one TTL for all, the
/// first to expire, so expired records go first); when there is none, it
/// drops the claims whose lease has ended. A live in-flight claim is never
/// evicted; when every entry is one, the claim fails with
/// [`StoreError::is_full`], which the layer answers with `503` (and
/// `Retry-After`). Memory use is about `max_entries`
/// times the stored response size (at most the layer's `max_response`).
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use kneo_server::idempotency::{Fingerprint, RecordKey, Scope};
/// use kneo_server::store::{Acquire, MemoryStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new().max_entries(1);
/// let fp = Fingerprint::of(&Method::POST, "/", b"");
/// let lease = Duration::from_secs(60);
/// let a = RecordKey::new(Scope::anonymous(), "a");
/// let b = RecordKey::new(Scope::anonymous(), "b");
/// assert!(matches!(store.claim(&a, fp, lease).await, Ok(Acquire::Claimed(_))));
/// // Full of in-flight claims: refused, never evicted.
/// assert!(store.claim(&b, fp, lease).await.unwrap_err().is_full());
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    map: Mutex<Map>,
    max_entries: usize,
}

#[derive(Default)]
struct Map {
    entries: HashMap<RecordKey, Entry>,
    /// Completed entries by completion order, oldest first.
    completed: BTreeMap<u64, RecordKey>,
    next_seq: u64,
    next_token: u64,
}

struct Entry {
    state: State,
    expires: Instant,
}

enum State {
    InFlight(Claim),
    Completed { record: Completed, seq: u64 },
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("max_entries", &self.inner.max_entries)
            .finish()
    }
}

impl MemoryStore {
    /// An empty store holding at most [`DEFAULT_MAX_ENTRIES`] records.
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// The same store with a different bound (at least 1). Call it before
    /// the store is cloned: it makes a new, empty store.
    pub fn max_entries(self, max: usize) -> Self {
        Self::with_max_entries(max)
    }

    fn with_max_entries(max: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                map: Mutex::new(Map {
                    next_token: 1,
                    ..Map::default()
                }),
                max_entries: max.max(1),
            }),
        }
    }

    /// How many entries (claims and records, expired ones not yet dropped) it holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// `true` when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Map {
    /// Makes room for one more entry, or says the store is full of claims.
    ///
    /// Completed records share the layer's TTL, so the oldest completed is
    /// also the first to expire: evicting from the front of `completed` drops
    /// expired records first, in O(log n). Only a store with no completed
    /// record left is scanned for expired claims.
    fn make_room(&mut self, max: usize, now: Instant) -> Result<(), StoreError> {
        if self.entries.len() < max {
            return Ok(());
        }
        if let Some((_, oldest)) = self.completed.pop_first() {
            self.entries.remove(&oldest);
            return Ok(());
        }
        self.entries.retain(|_, e| e.expires > now);
        if self.entries.len() < max {
            Ok(())
        } else {
            Err(StoreError::full())
        }
    }
}

/// `now + d`, saturating at [`MAX_DURATION`](crate::idempotency::MAX_DURATION)
/// from now: no `Duration` a caller passes can overflow an `Instant`.
fn later(now: Instant, d: Duration) -> Instant {
    now + d.min(crate::idempotency::MAX_DURATION)
}

impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Acquire, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let map = &mut *map;
        if map.entries.len() >= self.inner.max_entries && !map.entries.contains_key(key) {
            map.make_room(self.inner.max_entries, now)?;
        }
        let token = FencingToken::new(map.next_token);
        let claim = Claim::new(token, fingerprint);
        let fresh = Entry {
            state: State::InFlight(claim),
            expires: later(now, lease),
        };
        match map.entries.entry(key.clone()) {
            hash_map::Entry::Occupied(mut held) if held.get().expires > now => {
                return Ok(match &held.get_mut().state {
                    State::InFlight(holder) => Acquire::InFlight(holder.fingerprint()),
                    State::Completed { record, .. } => Acquire::Completed(record.clone()),
                });
            }
            hash_map::Entry::Occupied(mut expired) => {
                if let State::Completed { seq, .. } = expired.get().state {
                    map.completed.remove(&seq);
                }
                expired.insert(fresh);
            }
            hash_map::Entry::Vacant(free) => {
                free.insert(fresh);
            }
        }
        map.next_token += 1;
        Ok(Acquire::Claimed(claim))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        claim: &Claim,
        record: &Completed,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let map = &mut *map;
        let Some(entry) = map.entries.get_mut(key) else {
            return Ok(false);
        };
        let holds = entry.expires > now
            && matches!(&entry.state, State::InFlight(c) if c.token() == claim.token());
        if !holds {
            return Ok(false);
        }
        let seq = map.next_seq;
        map.next_seq += 1;
        entry.state = State::Completed {
            record: record.clone(),
            seq,
        };
        entry.expires = later(now, ttl);
        map.completed.insert(seq, key.clone());
        Ok(true)
    }

    async fn renew(
        &self,
        key: &RecordKey,
        claim: &Claim,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(entry) = map.entries.get_mut(key) else {
            return Ok(false);
        };
        let holds = entry.expires > now
            && matches!(&entry.state, State::InFlight(c) if c.token() == claim.token());
        if holds {
            entry.expires = later(now, lease);
        }
        Ok(holds)
    }

    async fn release(&self, key: &RecordKey, claim: &Claim) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let holds = map.entries.get(key).is_some_and(|e| {
            e.expires > now && matches!(&e.state, State::InFlight(c) if c.token() == claim.token())
        });
        if holds {
            map.entries.remove(key);
        }
        Ok(holds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{Outcome, Scope};
    use http::{Method, StatusCode};

    fn key(k: &str) -> RecordKey {
        RecordKey::new(Scope::anonymous(), k)
    }

    fn fp() -> Fingerprint {
        Fingerprint::of(&Method::POST, "/", b"")
    }

    fn done() -> Completed {
        Completed::new(fp(), Outcome::NotStored(StatusCode::OK))
    }

    const LONG: Duration = Duration::from_secs(3600);

    async fn claimed(store: &MemoryStore, k: &str, lease: Duration) -> Claim {
        match store.claim(&key(k), fp(), lease).await {
            Ok(Acquire::Claimed(c)) => c,
            other => panic!("{k}: expected a claim, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn full_store_evicts_the_oldest_completed_record_first() {
        let store = MemoryStore::new().max_entries(3);
        for k in ["a", "b"] {
            let c = claimed(&store, k, LONG).await;
            assert!(store
                .complete(&key(k), &c, &done(), LONG)
                .await
                .expect("memory"));
        }
        let _c = claimed(&store, "c", LONG).await; // in flight
        let _d = claimed(&store, "d", LONG).await; // evicts a (oldest completed)
        assert_eq!(store.len(), 3);
        assert!(matches!(
            store.claim(&key("b"), fp(), LONG).await,
            Ok(Acquire::Completed(_))
        ));
        // a was evicted: its key is free again.
        let _a = claimed(&store, "a", LONG).await; // evicts b
        assert!(matches!(
            store.claim(&key("c"), fp(), LONG).await,
            Ok(Acquire::InFlight(_))
        ));
        // Only claims left: refused.
        let err = store.claim(&key("e"), fp(), LONG).await.expect_err("full");
        assert!(err.is_full());
        assert_eq!(
            err.to_string(),
            "idempotency store full of in-flight claims"
        );
    }

    #[tokio::test]
    async fn a_full_store_of_claims_drops_the_ones_whose_lease_ended() {
        let store = MemoryStore::new().max_entries(2);
        let _a = claimed(&store, "a", LONG).await;
        let _b = claimed(&store, "b", Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _c = claimed(&store, "c", LONG).await;
        // b's lease had ended, so it went; a's claim is still there.
        assert!(matches!(
            store.claim(&key("a"), fp(), LONG).await,
            Ok(Acquire::InFlight(_))
        ));
        assert_eq!(store.len(), 2);
    }
}
