//! [`PostgresStore`]: records in a Postgres table, for a fleet that has a
//! database and no Redis; the same table the
//! [transactional layer](crate::transactional) commits into.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use super::{Acquire, Store, StoreError};
use crate::record::{Claim, Completed, FencingToken, Fingerprint, RecordKey, MAX_DURATION};

/// The schema: the `kneo_idempotency` table and its expiry index. Run it once
/// (it is idempotent) with [`PostgresStore::migrate`] or your own migration
/// tool; nothing creates it implicitly.
pub const MIGRATION: &str = include_str!("../../migrations/0001_kneo_idempotency.sql");

/// The default limit on each statement, a pool checkout included.
pub const DEFAULT_POSTGRES_TIMEOUT: Duration = Duration::from_secs(1);

/// Claims a free (or expired) key, or returns what holds it: one statement,
/// atomic under concurrency (`ON CONFLICT DO UPDATE` locks the row and sees
/// its latest committed version). The returned value is ours when we
/// claimed it.
const CLAIM: &str = "\
INSERT INTO kneo_idempotency (scope, key, value, expires_at)
VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
ON CONFLICT (scope, key) DO UPDATE SET
    value = CASE WHEN kneo_idempotency.expires_at <= clock_timestamp()
        THEN EXCLUDED.value ELSE kneo_idempotency.value END,
    expires_at = CASE WHEN kneo_idempotency.expires_at <= clock_timestamp()
        THEN EXCLUDED.expires_at ELSE kneo_idempotency.expires_at END
RETURNING value";

/// Replaces the live claim `$3` with the record `$4` for `$5` seconds.
const COMPLETE: &str = "\
UPDATE kneo_idempotency
SET value = $4, expires_at = clock_timestamp() + make_interval(secs => $5)
WHERE scope = $1 AND key = $2 AND value = $3 AND expires_at > clock_timestamp()";

/// Moves the live claim `$3`'s expiry to `$4` seconds from now.
const RENEW: &str = "\
UPDATE kneo_idempotency
SET expires_at = clock_timestamp() + make_interval(secs => $4)
WHERE scope = $1 AND key = $2 AND value = $3 AND expires_at > clock_timestamp()";

/// Deletes the live claim `$3`.
const RELEASE: &str = "\
DELETE FROM kneo_idempotency
WHERE scope = $1 AND key = $2 AND value = $3 AND expires_at > clock_timestamp()";

/// Deletes at most `$1` expired rows.
const DELETE_EXPIRED: &str = "\
DELETE FROM kneo_idempotency WHERE ctid IN (
    SELECT ctid FROM kneo_idempotency WHERE expires_at <= clock_timestamp() LIMIT $1
)";

/// A [`Store`] in Postgres: one row per (scope, key) in `kneo_idempotency`
/// (see [`MIGRATION`]), holding the record in its compact encoding, for
/// servers that share a database (and, for `kneo proxy --idempotency
/// postgres://…`, a team without Redis).
///
/// - **claim**: one `INSERT … ON CONFLICT DO UPDATE … RETURNING`, which claims
///   a free or expired key or returns what is there; a replay costs this one
///   statement;
/// - **complete**, **renew**, **release**: one `UPDATE`/`DELETE` each, fenced by
///   comparing the stored claim (its random 64-bit token is part of it).
///
/// A first request costs 2 statements, a replay 1. Each is bounded by
/// [`timeout`](PostgresStore::timeout) (pool checkout included), so an
/// unreachable database fails fast and the layer fails closed.
///
/// **Expiry.** Rows whose `expires_at` has passed count as absent; they are
/// deleted by [`delete_expired`](PostgresStore::delete_expired), which you
/// schedule (every minute, say: it deletes in batches and uses the
/// `expires_at` index). Until then an expired row costs its disk space only.
///
/// For a handler whose effect is a write in the same database, the
/// [transactional layer](crate::transactional) commits the record with that
/// write, which no separate store can do.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    timeout: Duration,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store on `pool` (the application's own, or one of its own).
    pub fn new(pool: PgPool) -> Self {
        PostgresStore {
            pool,
            timeout: DEFAULT_POSTGRES_TIMEOUT,
        }
    }

    /// Connects a pool of its own to `url` (`postgres://user:password@host/db`;
    /// never printed).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .acquire_timeout(DEFAULT_POSTGRES_TIMEOUT * 2)
            .connect(url)
            .await
            .map_err(|e| StoreError::unavailable(redacted(e)))?;
        Ok(Self::new(pool))
    }

    /// The limit on each statement, a pool checkout included (default
    /// [`DEFAULT_POSTGRES_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table and its index if they are missing ([`MIGRATION`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrate(&self.pool).await
    }

    /// Deletes up to `batch` rows whose time has passed; returns how many.
    /// Schedule it (a row counts as absent once expired either way).
    pub async fn delete_expired(&self, batch: u32) -> Result<u64, StoreError> {
        let query = sqlx::query(DELETE_EXPIRED).bind(i64::from(batch));
        let done = self.within(query.execute(&self.pool)).await?;
        Ok(done.rows_affected())
    }

    async fn within<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::unavailable(redacted(e))),
            Err(elapsed) => Err(StoreError::unavailable(elapsed)),
        }
    }

    /// Runs a fenced statement on (scope, key, claim, seconds[, record]);
    /// `true` when it changed the row.
    async fn fenced(
        &self,
        sql: &'static str,
        key: &RecordKey,
        claim: &Claim,
        extra: Extra<'_>,
    ) -> Result<bool, StoreError> {
        let query = sqlx::query(sql)
            .bind(key.scope().as_bytes().as_slice())
            .bind(key.key())
            .bind(claim.encode());
        let query = match extra {
            Extra::None => query,
            Extra::Secs(secs) => query.bind(secs),
            Extra::Record(record, secs) => query.bind(record).bind(secs),
        };
        let done = self.within(query.execute(&self.pool)).await?;
        Ok(done.rows_affected() == 1)
    }
}

/// What a fenced statement binds after (scope, key, claim).
enum Extra<'a> {
    None,
    Secs(f64),
    Record(&'a [u8], f64),
}

/// Creates `kneo_idempotency` and its index on `pool` if they are missing.
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql(MIGRATION)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|e| StoreError::unavailable(redacted(e)))
}

/// Seconds for `make_interval`, within the layer's bound.
pub(crate) fn secs(d: Duration) -> f64 {
    d.min(MAX_DURATION).as_secs_f64().max(0.001)
}

/// sqlx's error, with nothing of a connection string in it: only its kind
/// and the database's own message.
pub(crate) fn redacted(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!("database error: {}", db.message()),
        sqlx::Error::Configuration(_) => "invalid Postgres configuration".to_owned(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a Postgres connection".to_owned(),
        sqlx::Error::Io(io) => format!("Postgres I/O error: {io}"),
        sqlx::Error::Tls(_) => "Postgres TLS error".to_owned(),
        other => format!("Postgres error: {}", short_kind(&other)),
    }
}

fn short_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::RowNotFound => "row not found",
        sqlx::Error::PoolClosed => "pool closed",
        sqlx::Error::WorkerCrashed => "worker crashed",
        _ => "other",
    }
}

impl Store for PostgresStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Acquire, StoreError> {
        let claim = Claim::new(FencingToken::new(fastrand::u64(..)), fingerprint);
        let value = claim.encode();
        let query = sqlx::query(CLAIM)
            .bind(key.scope().as_bytes().as_slice())
            .bind(key.key())
            .bind(value.as_slice())
            .bind(secs(lease));
        let row = self.within(query.fetch_one(&self.pool)).await?;
        let held: Vec<u8> = row
            .try_get("value")
            .map_err(|e| StoreError::corrupt(redacted(e)))?;
        if held == value {
            return Ok(Acquire::Claimed(claim));
        }
        Acquire::held(&held)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        claim: &Claim,
        record: &Completed,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let record = record.encode();
        self.fenced(COMPLETE, key, claim, Extra::Record(&record, secs(ttl)))
            .await
    }

    async fn renew(
        &self,
        key: &RecordKey,
        claim: &Claim,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.fenced(RENEW, key, claim, Extra::Secs(secs(lease)))
            .await
    }

    async fn release(&self, key: &RecordKey, claim: &Claim) -> Result<bool, StoreError> {
        self.fenced(RELEASE, key, claim, Extra::None).await
    }
}
