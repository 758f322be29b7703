//! The request [`Fingerprint`]: what "the same request" means for a key.

use std::fmt;

use http::Method;
use sha2::{Digest, Sha256};

/// SHA-256 over a request's method, path and query, media type and body.
///
/// Each field is length-prefixed (u64, big-endian) before it is hashed, so no
/// two different requests can be made to hash the same input by moving bytes
/// from one field to the next (`POST /a` + body `b` is not `POST /ab`).
/// The media type (`Content-Type` without its parameters, lowercased; see
/// [`of_request`](Fingerprint::of_request)) is part of it: the same bytes
/// sent as JSON and as a form are two requests. No other header is: a retry
/// may carry a new `Date` or request id.
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
    /// The fingerprint of a request without a `Content-Type`.
    pub fn of(method: &Method, path_and_query: &str, body: &[u8]) -> Self {
        Self::of_request(method, path_and_query, None, body)
    }

    /// The fingerprint of a request whose `Content-Type` is `content_type`
    /// (the layer passes the header's value): only its media type counts,
    /// lowercased, so `application/json; charset=utf-8` and
    /// `Application/JSON` are one type.
    ///
    /// ```
    /// use http::Method;
    /// use kneo_server::idempotency::Fingerprint;
    ///
    /// let json = Fingerprint::of_request(&Method::POST, "/", Some(b"application/json"), b"a=1");
    /// let form = Fingerprint::of_request(&Method::POST, "/", Some(b"application/x-www-form-urlencoded"), b"a=1");
    /// assert_ne!(json, form);
    /// assert_eq!(json, Fingerprint::of_request(&Method::POST, "/", Some(b"Application/JSON; charset=utf-8"), b"a=1"));
    /// assert_eq!(Fingerprint::of(&Method::POST, "/", b"a=1"), Fingerprint::of_request(&Method::POST, "/", None, b"a=1"));
    /// ```
    pub fn of_request(
        method: &Method,
        path_and_query: &str,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Self {
        let mut hasher = Sha256::new();
        for field in [method.as_str().as_bytes(), path_and_query.as_bytes(), body] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        if let Some(content_type) = content_type {
            let media_type = content_type
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
                .to_ascii_lowercase();
            // A fourth field, only when there is one: requests without a
            // Content-Type keep the fingerprint of earlier versions.
            hasher.update((media_type.len() as u64).to_be_bytes());
            hasher.update(&media_type);
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
