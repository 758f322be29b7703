//! [`IdempotentTransaction`]: the request's database transaction, as the
//! handler sees it.

use std::fmt;
use std::sync::Arc;

use sqlx::{Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

/// The transaction a keyed request's handler writes its effect in; the
/// layer claims the key in it before the handler runs and commits it, with
/// the response, after. Found in the request's extensions (with the `axum`
/// feature, an extractor).
///
/// ```ignore
/// async fn create_payment(tx: IdempotentTransaction, Json(p): Json<Payment>) -> Result<StatusCode, ProblemResponse> {
///     let mut tx = tx.lock().await?;
///     sqlx::query("INSERT INTO ledger (amount) VALUES ($1)").bind(p.amount).execute(&mut **tx).await?;
///     Ok(StatusCode::CREATED) // committed by the layer, together with this response
/// }
/// ```
///
/// Do not commit or roll it back yourself, and do not keep it past the
/// handler: the layer takes it back when the handler returns.
#[derive(Clone)]
pub struct IdempotentTransaction {
    tx: Arc<Mutex<Option<Transaction<'static, Postgres>>>>,
}

/// The handler's hold on the request's transaction ([`IdempotentTransaction::lock`]).
pub type TransactionGuard =
    OwnedMappedMutexGuard<Option<Transaction<'static, Postgres>>, Transaction<'static, Postgres>>;

/// The transaction is no longer the handler's: the layer has taken it back
/// (the handler already returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionTaken(());

impl fmt::Display for TransactionTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request's transaction was already taken back by the idempotency layer")
    }
}

impl std::error::Error for TransactionTaken {}

impl IdempotentTransaction {
    pub(crate) fn new(tx: Transaction<'static, Postgres>) -> Self {
        IdempotentTransaction {
            tx: Arc::new(Mutex::new(Some(tx))),
        }
    }

    /// The transaction, to run queries in (`&mut **guard` is an executor).
    /// The guard owns its lock (it borrows nothing), so it can be held
    /// across the handler's awaits.
    pub async fn lock(&self) -> Result<TransactionGuard, TransactionTaken> {
        OwnedMutexGuard::try_map(self.tx.clone().lock_owned().await, Option::as_mut)
            .map_err(|_| TransactionTaken(()))
    }

    /// Takes the transaction back (the layer, once the handler returned).
    pub(crate) async fn take(&self) -> Option<Transaction<'static, Postgres>> {
        self.tx.lock().await.take()
    }
}

impl fmt::Debug for IdempotentTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentTransaction")
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for IdempotentTransaction {
    type Rejection = crate::ProblemResponse;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            crate::ProblemResponse::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                kneo_core::codes::SERVER_ERROR,
            )
            .detail("This route takes an IdempotentTransaction but is not behind IdempotencyLayer::new(Transactional::new(pool)), or the request has no Idempotency-Key.")
        })
    }
}
