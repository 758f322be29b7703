//! [`MemoryStore`]: records in this process, bounded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Acquire, Store, StoreError};
use crate::record::{Claim, Completed, FencingToken, Fingerprint, Record, RecordKey, MAX_DURATION};

/// The default bound on records kept.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// An in-process [`Store`]: a map behind one mutex, with expiry, bounded.
///
/// Right for a single server (or tests). Records die with the process, and two
/// processes do not see each other's claims: behind a load balancer, use
/// `RedisStore`.
///
/// **Bound.** At most [`max_entries`](MemoryStore::max_entries) entries
/// (in-flight claims and completed records) are kept. When a new claim finds
/// the store full, it makes room for one, in this order:
///
/// 1. a claim whose lease has ended (its process crashed or gave up);
/// 2. a completed record whose TTL has ended;
/// 3. the oldest completed record **of the scope that holds the most
///    completed records**: one caller filling the store pushes out its own
///    records, never those of a caller with fewer (so nobody can evict
///    another caller's records by sending many keys).
///
/// A live in-flight claim is never evicted; when every entry is one, the
/// claim fails with [`StoreError::is_full`], which the layer answers with
/// `503` (and `Retry-After`). Each step is O(log n).
///
/// **Memory.** A completed record is kept in its [`Record`] encoding: one
/// allocation of its own, the size of the stored response (headers and body,
/// at most the layer's `max_response`) and about 40 bytes, decoded for a
/// replay. Its bytes are copied, not shared: a response read by hyper is a
/// slice of its connection's read buffer (8 KiB or more), which a kept slice
/// would keep whole. With the map and the indexes, an entry costs about
/// 400 bytes more than its encoding.
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

/// A scope, as the indexes name it.
type ScopeId = [u8; 32];

#[derive(Default)]
struct Map {
    entries: HashMap<RecordKey, Entry>,
    /// In-flight claims by lease end: dead ones first.
    claims: BTreeMap<(Instant, u64), RecordKey>,
    /// Completed records by completion order, oldest first.
    completed: BTreeMap<u64, RecordKey>,
    /// Each scope's completed records, oldest first.
    scopes: HashMap<ScopeId, BTreeMap<u64, RecordKey>>,
    /// Scopes by how many completed records they hold.
    by_size: BTreeSet<(usize, ScopeId)>,
    next_seq: u64,
    next_token: u64,
}

struct Entry {
    state: State,
    expires: Instant,
}

enum State {
    InFlight(Claim),
    /// The record's [`Record`] encoding.
    Completed {
        record: Arc<[u8]>,
        seq: u64,
    },
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

/// `now + d`, saturating at [`MAX_DURATION`](MAX_DURATION)
/// from now: no `Duration` a caller passes can overflow an `Instant`.
fn later(now: Instant, d: Duration) -> Instant {
    now + d.min(MAX_DURATION)
}

/// A completed record, read back from its encoding.
fn decode_completed(bytes: &[u8]) -> Result<Acquire, StoreError> {
    match Record::decode(bytes).map_err(StoreError::corrupt)? {
        Record::Completed(done) => Ok(Acquire::Completed(done)),
        Record::InFlight(_) => Err(StoreError::corrupt("a claim kept as a completed record")),
    }
}

impl Map {
    /// The entry of `key` if it is `claim`, still live.
    fn live_claim(&mut self, key: &RecordKey, claim: &Claim, now: Instant) -> Option<&mut Entry> {
        self.entries.get_mut(key).filter(|e| {
            e.expires > now && matches!(&e.state, State::InFlight(c) if c.token() == claim.token())
        })
    }

    /// Removes `key` and every index entry naming it.
    fn remove(&mut self, key: &RecordKey) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        match entry.state {
            State::InFlight(claim) => {
                self.claims.remove(&(entry.expires, claim.token().get()));
            }
            State::Completed { seq, .. } => {
                self.completed.remove(&seq);
                self.unindex_completed(key.scope().as_bytes(), seq);
            }
        }
    }

    fn index_completed(&mut self, key: &RecordKey, seq: u64) {
        let id = *key.scope().as_bytes();
        let records = self.scopes.entry(id).or_default();
        let before = records.len();
        records.insert(seq, key.clone());
        self.by_size.remove(&(before, id));
        self.by_size.insert((before + 1, id));
    }

    fn unindex_completed(&mut self, id: &ScopeId, seq: u64) {
        let Some(records) = self.scopes.get_mut(id) else {
            return;
        };
        let before = records.len();
        if records.remove(&seq).is_none() {
            return;
        }
        self.by_size.remove(&(before, *id));
        if before > 1 {
            self.by_size.insert((before - 1, *id));
        } else {
            self.scopes.remove(id);
        }
    }

    /// Makes room for one more entry (see [`MemoryStore`]'s bound), or
    /// says the store is full of live claims.
    fn make_room(&mut self, max: usize, now: Instant) -> Result<(), StoreError> {
        if self.entries.len() < max {
            return Ok(());
        }
        let dead_claim = self
            .claims
            .first_key_value()
            .filter(|((ends, _), _)| *ends <= now)
            .map(|(_, key)| key.clone());
        let expired_record = || {
            self.completed
                .first_key_value()
                .filter(|(_, key)| self.entries.get(*key).is_some_and(|e| e.expires <= now))
                .map(|(_, key)| key.clone())
        };
        let heaviest_scope = || {
            let (_, id) = self.by_size.last()?;
            let (_, key) = self.scopes.get(id)?.first_key_value()?;
            Some(key.clone())
        };
        match dead_claim.or_else(expired_record).or_else(heaviest_scope) {
            Some(victim) => {
                self.remove(&victim);
                Ok(())
            }
            None => Err(StoreError::full()),
        }
    }
}

impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Acquire, StoreError> {
        let now = Instant::now();
        let mut guard = self.lock();
        let map = &mut *guard;
        match map.entries.get(key) {
            Some(held) if held.expires > now => {
                return match &held.state {
                    State::InFlight(holder) => Ok(Acquire::InFlight(holder.fingerprint())),
                    State::Completed { record, .. } => {
                        let record = Arc::clone(record);
                        drop(guard);
                        decode_completed(&record)
                    }
                };
            }
            Some(_) => map.remove(key),
            None => map.make_room(self.inner.max_entries, now)?,
        }
        let token = map.next_token;
        map.next_token += 1;
        let claim = Claim::new(FencingToken::new(token), fingerprint);
        let expires = later(now, lease);
        map.entries.insert(
            key.clone(),
            Entry {
                state: State::InFlight(claim),
                expires,
            },
        );
        map.claims.insert((expires, token), key.clone());
        Ok(Acquire::Claimed(claim))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        claim: &Claim,
        record: &Completed,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Encoded outside the lock: a copy of its own (see `MemoryStore`).
        let record: Arc<[u8]> = record.encode().into();
        let now = Instant::now();
        let mut map = self.lock();
        let map = &mut *map;
        let seq = map.next_seq;
        let Some(entry) = map.live_claim(key, claim, now) else {
            return Ok(false);
        };
        let lease_ended = entry.expires;
        entry.state = State::Completed { record, seq };
        entry.expires = later(now, ttl);
        map.next_seq += 1;
        map.claims.remove(&(lease_ended, claim.token().get()));
        map.completed.insert(seq, key.clone());
        map.index_completed(key, seq);
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
        let map = &mut *map;
        let Some(entry) = map.live_claim(key, claim, now) else {
            return Ok(false);
        };
        let old = entry.expires;
        entry.expires = later(now, lease);
        let new = entry.expires;
        let token = claim.token().get();
        if let Some(name) = map.claims.remove(&(old, token)) {
            map.claims.insert((new, token), name);
        }
        Ok(true)
    }

    async fn release(&self, key: &RecordKey, claim: &Claim) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let holds = map.live_claim(key, claim, now).is_some();
        if holds {
            map.remove(key);
        }
        Ok(holds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Completion, Scope, StoredResponse};
    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, Method, StatusCode};

    fn key(k: &str) -> RecordKey {
        RecordKey::new(Scope::anonymous(), k)
    }

    fn fp() -> Fingerprint {
        Fingerprint::of(&Method::POST, "/", b"")
    }

    fn done() -> Completed {
        Completed::new(fp(), Completion::NotStored(StatusCode::OK))
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

    fn scoped(scope: &str, k: &str) -> RecordKey {
        RecordKey::new(Scope::of(scope), k)
    }

    async fn complete_new(store: &MemoryStore, key: &RecordKey) {
        let Ok(Acquire::Claimed(c)) = store.claim(key, fp(), LONG).await else {
            panic!("{key:?}: expected a claim");
        };
        assert!(store
            .complete(key, &c, &done(), LONG)
            .await
            .expect("memory"));
    }

    #[tokio::test]
    async fn one_caller_cannot_evict_another_s_records() {
        let store = MemoryStore::new().max_entries(100);
        let alice = scoped("Bearer alice", "K");
        complete_new(&store, &alice).await;
        for i in 0..1_000 {
            complete_new(&store, &scoped("Bearer mallory", &format!("m-{i}"))).await;
        }
        assert_eq!(store.len(), 100);
        assert!(
            matches!(
                store.claim(&alice, fp(), LONG).await,
                Ok(Acquire::Completed(_))
            ),
            "alice's record outlived mallory's flood"
        );
        // Mallory's newest records are the ones kept.
        assert!(matches!(
            store
                .claim(&scoped("Bearer mallory", "m-999"), fp(), LONG)
                .await,
            Ok(Acquire::Completed(_))
        ));
        assert!(matches!(
            store
                .claim(&scoped("Bearer mallory", "m-0"), fp(), LONG)
                .await,
            Ok(Acquire::Claimed(_))
        ));
    }

    #[tokio::test]
    async fn dead_claims_go_before_live_records() {
        let store = MemoryStore::new().max_entries(3);
        complete_new(&store, &key("record-1")).await;
        complete_new(&store, &key("record-2")).await;
        let _dead = claimed(&store, "dead", Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _new = claimed(&store, "new", LONG).await;
        for k in ["record-1", "record-2"] {
            assert!(
                matches!(
                    store.claim(&key(k), fp(), LONG).await,
                    Ok(Acquire::Completed(_))
                ),
                "{k} was evicted before the dead claim"
            );
        }
    }

    #[tokio::test]
    async fn a_kept_record_does_not_keep_the_buffer_it_was_read_from() {
        // hyper hands out the body and header values as slices of its
        // connection's read buffer.
        let read_buf = Bytes::from(vec![b'x'; 8192]);
        let value = HeaderValue::from_maybe_shared(read_buf.slice(0..4)).expect("visible ASCII");
        let record = Completed::new(
            fp(),
            Completion::Stored(StoredResponse::new(
                StatusCode::CREATED,
                vec![(HeaderName::from_static("x-id"), value)],
                read_buf.slice(100..164),
            )),
        );
        let store = MemoryStore::new();
        let c = claimed(&store, "a", LONG).await;
        assert!(store
            .complete(&key("a"), &c, &record, LONG)
            .await
            .expect("memory"));
        let Ok(Acquire::Completed(replay)) = store.claim(&key("a"), fp(), LONG).await else {
            panic!("expected the record");
        };
        assert_eq!(replay, record);
        drop((record, replay));
        assert!(
            read_buf.is_unique(),
            "the store keeps a slice of the read buffer"
        );
    }

    #[tokio::test]
    async fn a_renewed_claim_is_not_dead() {
        let store = MemoryStore::new().max_entries(1);
        // A lease the renewal comes well within, however slow the machine.
        let c = claimed(&store, "a", Duration::from_millis(500)).await;
        assert!(store.renew(&key("a"), &c, LONG).await.expect("memory"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let err = store.claim(&key("b"), fp(), LONG).await.expect_err("full");
        assert!(err.is_full(), "the renewed claim was kept");
    }
}
