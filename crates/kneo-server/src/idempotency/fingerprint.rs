//! The request [`Fingerprint`]: what "the same request" means for a key.

use std::fmt;

use http::Method;
use sha2::{Digest, Sha256};

/// SHA-256 over a request's method, path and query, and body.
///
/// Each field is length-prefixed (u64, big-endian) before it is hashed, so no
/// two different requests can be made to hash the same input by moving bytes
/// from one field to the next (`POST /a` + body `b` is not `POST /ab`).
/// Headers are not part of it: a retry may carry a new `Date` or request id.
///
/// ```
/// use http::Method;
/// use kneo_server::idempotency::Fingerprint;
///
/// let a = Fingerprint::of(&Method::POST, "/payments?currency=eur", br#"{"amount":10}"#);
/// assert_eq!(a, Fingerprint::of(&Method::POST, "/payments?currency=eur", br#"{"amount":10}"#));
/// assert_ne!(a, Fingerprint::of(&Method::POST, "/payments?currency=eur", br#"{"amount":11}"#));
/// assert_ne!(a, Fingerprint::of(&Method::PATCH, "/payments?currency=eur", br#"{"amount":10}"#));
/// assert_ne!(
///     Fingerprint::of(&Method::POST, "/a", b"b"),
///     Fingerprint::of(&Method::POST, "/ab", b""),
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request.
    pub fn of(method: &Method, path_and_query: &str, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        for field in [method.as_str().as_bytes(), path_and_query.as_bytes(), body] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        Fingerprint(hasher.finalize().into())
    }

    /// A fingerprint from its 32 bytes (for stores that decode their own).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex(&self.0[..8]))
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}
