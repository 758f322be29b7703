//! Exactly-once inside the handler's own transaction (feature `postgres`):
//! the idempotency record commits **in the same Postgres transaction** as the
//! handler's write, so the effect and the record exist together or not at all.
//!
//! ```ignore
//! use kneo_server::transactional::{IdempotentTransaction, Transactional};
//! use kneo_server::IdempotencyLayer;
//!
//! kneo_server::store::PostgresStore::new(pool.clone()).migrate().await?; // once
//! let app = axum::Router::new()
//!     .route("/payments", axum::routing::post(create_payment))
//!     .layer(IdempotencyLayer::new(Transactional::new(pool)));
//!
//! async fn create_payment(tx: IdempotentTransaction) -> Result<StatusCode, ProblemResponse> {
//!     let mut tx = tx.lock().await?;
//!     sqlx::query("INSERT INTO ledger (amount) VALUES (10)").execute(&mut **tx).await?;
//!     Ok(StatusCode::CREATED)
//! }
//! ```
//!
//! (`examples/postgres_payments.rs` is a whole server.)
//!
//! # What happens to a keyed request
//!
//! 1. The layer reads and fingerprints the request, as
//!    [`IdempotencyLayer`](crate::IdempotencyLayer) does with any store.
//! 2. It opens a transaction on the pool and inserts the key's row in
//!    `kneo_idempotency` ([`MIGRATION`](crate::store::MIGRATION)). The row is
//!    invisible to everyone else until the commit, and its lock makes a
//!    concurrent request with the same key **wait** for this one.
//! 3. The handler runs with the transaction in its extensions
//!    ([`IdempotentTransaction`]) and writes its effect in it.
//! 4. The layer reads the response (up to `max_response`), writes it into the
//!    row and **commits once**: effect and record together. Only then does the
//!    caller get the response.
//!
//! | what happens | what is committed | the caller, and a retry |
//! |---|---|---|
//! | the handler answers (any status but 429/503) | effect and record | the response; a retry gets the replay |
//! | it answers 429 or 503, returns `Err`, panics, its body fails | nothing (rolled back) | that answer (or a closed connection; `503` for a failed body); a retry runs |
//! | the commit fails | nothing | `503` "not processed" with `Retry-After`; a retry runs (or, if the commit did land before the connection broke, replays) |
//! | the caller hangs up, the process is killed, the connection drops, anywhere before the commit | nothing: Postgres rolls back | a retry runs, exactly once |
//! | a response over `max_response` | effect, and a record without the response | the response; a retry gets `410` |
//!
//! Because a request that did not commit left nothing, this layer — unlike
//! the store-based one — may let the caller's hang-up cancel it.
//!
//! # Concurrent requests with one key
//!
//! The second waits on the first's row lock, up to
//! [`lock_wait`](Transactional::lock_wait) (default 1 s), then gets the
//! first's response (a replay), or runs if the first rolled back. Past the
//! wait it gets the usual `409` `idempotency_key_in_use` with `Retry-After`.
//! The default is short because a waiting request holds a pooled connection:
//! long waits under a burst of duplicates would empty the pool. Raise it when
//! your handlers are slow and the pool is large.
//!
//! Replays, `422` for another payload, `400` for a bad key, scopes, the TTL
//! (24 h; expired rows count as absent, and
//! [`PostgresStore::delete_expired`](crate::store::PostgresStore::delete_expired)
//! removes them) and the `410` are those of the other stores. `lease`,
//! `max_hold`, `wait_for_first` and `fail_open` do not apply: a transaction
//! has no lease, and a database that is down fails closed (`503`).
//!
//! # Calls the handler makes
//!
//! A call to another API cannot join the transaction. Give it the request's
//! [`IdempotencyKey::child_key`](crate::idempotency::IdempotencyKey::child_key)
//! (in the extensions): when the handler runs again after a rollback, the
//! call carries the same key and the other API replays it instead of doing
//! it twice.

mod handle;
mod service;

use std::fmt;
use std::time::Duration;

use sqlx::PgPool;

pub use handle::{IdempotentTransaction, TransactionGuard, TransactionTaken};

/// The default bound on waiting for another request with the same key.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(1);

/// What [`IdempotencyLayer::new`](crate::IdempotencyLayer::new) takes, in
/// place of a store, to commit records in the handler's transaction; see
/// the [module docs](self).
#[derive(Clone)]
pub struct Transactional {
    pool: PgPool,
    lock_wait: Duration,
    timeout: Duration,
}

impl Transactional {
    /// Transactions on `pool`, whose database has `kneo_idempotency`
    /// ([`PostgresStore::migrate`](crate::store::PostgresStore::migrate)).
    pub fn new(pool: PgPool) -> Self {
        Transactional {
            pool,
            lock_wait: DEFAULT_LOCK_WAIT,
            timeout: crate::store::DEFAULT_POSTGRES_TIMEOUT,
        }
    }

    /// How long a request waits for another with the same key before it is
    /// answered `409` (default [`DEFAULT_LOCK_WAIT`], at least 1 ms).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait.max(Duration::from_millis(1));
        self
    }

    /// The limit on opening the transaction and on the commit (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for Transactional {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactional")
            .field("lock_wait", &self.lock_wait)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
