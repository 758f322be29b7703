//! The one retry rule: given what a failed attempt says, may it be sent again?
//!
//! [`Error::is_retryable`](crate::Error::is_retryable) asks it with the
//! default status set; kneo's retry policy asks it with its configured set,
//! for mapped errors and raw responses alike. So the error's answer to "would
//! kneo retry this?" is the policy's answer under its defaults.
//!
//! The rule, in order:
//!
//! 1. Never an idempotency-key mismatch, a body that did not decode, or a
//!    request that could not be built, whatever the server advises.
//! 2. No response (a [`Network`](ErrorKind::Network) error): when the request
//!    never left (connect, DNS, TLS), or when it is replay-safe (idempotent
//!    method or an `Idempotency-Key`).
//! 3. The server's `x-should-retry: true|false` advice, when it gave one.
//! 4. A 409 with code `idempotency_key_in_use` (the original is still running).
//! 5. A status in the set (429, 502, 503, 504 by default); for a request that
//!    may have been applied (not replay-safe), only 429 and 503, which say
//!    the request was not processed. A rate limit answered with another
//!    status (a GitHub 403 whose headers say nothing is left) counts as a 429.
//!
//! ```
//! use http::{HeaderMap, Method, StatusCode};
//! use kneo_core::retry_rule::{is_retryable, RetryFacts, DEFAULT_RETRY_STATUSES};
//!
//! let headers = HeaderMap::new();
//! // A 502 on a GET may be retried; on a POST without a key it may have been applied.
//! let get = RetryFacts::of_response(StatusCode::BAD_GATEWAY, &headers, &Method::GET, false);
//! let post = RetryFacts::of_response(StatusCode::BAD_GATEWAY, &headers, &Method::POST, false);
//! let keyed = RetryFacts::of_response(StatusCode::BAD_GATEWAY, &headers, &Method::POST, true);
//! assert!(is_retryable(&get, &DEFAULT_RETRY_STATUSES));
//! assert!(!is_retryable(&post, &DEFAULT_RETRY_STATUSES));
//! assert!(is_retryable(&keyed, &DEFAULT_RETRY_STATUSES));
//! // 500 is not in the default set.
//! let e500 = RetryFacts::of_response(StatusCode::INTERNAL_SERVER_ERROR, &headers, &Method::GET, false);
//! assert!(!is_retryable(&e500, &DEFAULT_RETRY_STATUSES));
//! assert!(is_retryable(&e500, &[StatusCode::INTERNAL_SERVER_ERROR]));
//! ```

use http::{HeaderMap, Method, StatusCode};

use crate::classify::{is_not_processed, kind_from_headers, should_retry_advice};
use crate::codes;
use crate::kind::ErrorKind;
use crate::sent::is_idempotent;

/// The statuses retried by default: 429, 502, 503 and 504.
pub const DEFAULT_RETRY_STATUSES: [StatusCode; 4] = [
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// What one failed attempt says about retrying it; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryFacts {
    pub(crate) kind: ErrorKind,
    pub(crate) status: Option<StatusCode>,
    pub(crate) advice: Option<bool>,
    pub(crate) key_in_use: bool,
    pub(crate) replay_safe: bool,
    pub(crate) connect: bool,
}

impl RetryFacts {
    /// The facts of a raw response, from its status and headers alone (the
    /// body is not read, so only an `x-error-code` header gives a code):
    /// for a retry layer with no error mapping below it.
    pub fn of_response(
        status: StatusCode,
        headers: &HeaderMap,
        method: &Method,
        keyed: bool,
    ) -> Self {
        let (kind, code) = kind_from_headers(status, headers, keyed);
        RetryFacts {
            kind,
            status: Some(status),
            advice: should_retry_advice(headers),
            key_in_use: code.as_deref() == Some(codes::IDEMPOTENCY_KEY_IN_USE),
            replay_safe: keyed || is_idempotent(method),
            connect: false,
        }
    }
}

/// The retry rule: `true` when the attempt these facts describe may be sent
/// again, with `statuses` as the retried status set. See the [module docs](self).
pub fn is_retryable(facts: &RetryFacts, statuses: &[StatusCode]) -> bool {
    match facts.kind {
        ErrorKind::IdempotencyMismatch | ErrorKind::Decode | ErrorKind::Request => false,
        ErrorKind::Network => facts.connect || facts.replay_safe,
        _ => match facts.advice {
            Some(advice) => advice,
            None if facts.key_in_use => facts.kind == ErrorKind::Conflict,
            None => facts.status.is_some_and(|status| {
                // A rate limit answered with another status (GitHub's 403)
                // is retried as the 429 it stands for.
                let status = if facts.kind == ErrorKind::RateLimited {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    status
                };
                statuses.contains(&status) && (facts.replay_safe || is_not_processed(status))
            }),
        },
    }
}
