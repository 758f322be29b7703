//! [`IdempotencyKey`]: the key of the request a handler runs for, and the
//! keys of the calls it makes.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::record::fingerprint::hex;

/// The `Idempotency-Key` of the request being handled, in its extensions
/// (both layers put it there), and the keys the handler's own calls should
/// carry.
///
/// A handler whose effect is a call to another API cannot put that call in
/// its database transaction. If the handler is run again (its first run was
/// killed after the call, its transaction rolled back), the call must not be
/// repeated: [`child_key`](IdempotencyKey::child_key) gives it the same key
/// on every run, so the other API (kneo-server's layer, Stripe…) replays its
/// first answer. kneo's client keeps a key the request already carries.
///
/// ```
/// use kneo_server::idempotency::IdempotencyKey;
///
/// let key = IdempotencyKey::new("order-7");
/// assert_eq!(key.child_key("charge-card"), IdempotencyKey::new("order-7").child_key("charge-card"));
/// assert_ne!(key.child_key("charge-card"), key.child_key("send-receipt"));
/// assert_ne!(key.child_key("charge-card"), IdempotencyKey::new("order-8").child_key("charge-card"));
/// assert!(key.child_key("charge-card").starts_with("kneo-child-"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The key `key`.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        IdempotencyKey(key.into())
    }

    /// The key, as the client sent it (unquoted).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key for the call this request's handler makes under `label`
    /// (`"charge-card"`): the same on every run of this request, different
    /// for every other label and key. `kneo-child-` and 32 hex digits of a
    /// SHA-256 over both (length-prefixed), a valid `Idempotency-Key`.
    pub fn child_key(&self, label: &str) -> String {
        let mut hasher = Sha256::new();
        for field in [self.0.as_bytes(), label.as_bytes()] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        format!("kneo-child-{}", hex(&hasher.finalize()[..16]))
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}
