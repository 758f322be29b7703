//! [`ProblemType`]: kneo's problem types, and the one mapping from an
//! upstream's failure to the status and type answered for it.

use http::StatusCode;

use crate::{Error, ErrorKind};

/// The prefix of every `type` URI kneo answers with.
pub const TYPE_PREFIX: &str = "urn:kneo:problem:";

/// One kind of problem kneo answers with: its `type` URI and `title`. The
/// table is in the [module docs](crate::problem).
///
/// ```
/// use kneo_core::problem::ProblemType;
///
/// assert_eq!(ProblemType::IDEMPOTENCY_KEY_IN_USE.uri(), "urn:kneo:problem:idempotency-key-in-use");
/// assert_eq!(ProblemType::IDEMPOTENCY_KEY_IN_USE.title(), "Request in progress");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProblemType {
    uri: &'static str,
    title: &'static str,
}

macro_rules! problem_types {
    ($($(#[$doc:meta])* $name:ident = $slug:literal, $title:literal;)*) => {
        impl ProblemType {
            $(
                $(#[$doc])*
                pub const $name: ProblemType = ProblemType {
                    uri: concat!("urn:kneo:problem:", $slug),
                    title: $title,
                };
            )*

            /// Every type, in the order of the table.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$name),*];
        }
    };
}

problem_types! {
    /// An upstream that could not be reached or hung up (502).
    UPSTREAM_UNREACHABLE = "upstream-unreachable", "Upstream unreachable";
    /// An upstream that did not answer in time (504).
    UPSTREAM_TIMEOUT = "upstream-timeout", "Upstream timed out";
    /// An upstream's own failure: a 5xx, refused credentials, an unreadable answer (502).
    UPSTREAM_FAILED = "upstream-failed", "Upstream failed";
    /// An upstream's 404.
    NOT_FOUND = "not-found", "Not found";
    /// An upstream's 409.
    CONFLICT = "conflict", "Conflict";
    /// An upstream's 429, or its rate limit spent until a reset beyond the longest wait (429).
    RATE_LIMITED = "rate-limited", "Rate limited";
    /// A gateway serving as many connections as it may (503).
    OVERLOADED = "overloaded", "Too many connections";
    /// A request that cannot be forwarded or read (400, or 405 for a method).
    BAD_REQUEST = "bad-request", "Bad request";
    /// A route that requires an `Idempotency-Key`, called without one (400).
    IDEMPOTENCY_KEY_MISSING = "idempotency-key-missing", "Idempotency-Key required";
    /// An `Idempotency-Key` that is not a valid key (400).
    IDEMPOTENCY_KEY_INVALID = "idempotency-key-invalid", "Invalid Idempotency-Key";
    /// A keyed request body over the limit (413).
    REQUEST_BODY_TOO_LARGE = "request-body-too-large", "Request body too large";
    /// The key's request is still running (409).
    IDEMPOTENCY_KEY_IN_USE = "idempotency-key-in-use", "Request in progress";
    /// The key was used with another request (422).
    IDEMPOTENCY_KEY_MISMATCH = "idempotency-key-mismatch", "Idempotency-Key reused";
    /// The key's request ran, but its answer was not kept (410).
    RESPONSE_NOT_STORED = "response-not-stored", "Response not stored";
    /// A gateway's answer after which the request may have been applied (502, 504).
    UPSTREAM_OUTCOME_UNKNOWN = "upstream-outcome-unknown", "Upstream outcome unknown";
    /// The idempotency store could not be reached; nothing was run (503).
    STORE_UNAVAILABLE = "store-unavailable", "Idempotency store unavailable";
    /// A transactional response that failed before it was complete; nothing was committed (503).
    ROLLED_BACK = "rolled-back", "Request rolled back";
    /// A handler that stopped while it ran; it may have been applied (500).
    INTERRUPTED = "interrupted", "Request interrupted";
}

impl ProblemType {
    /// The `type` URI: [`TYPE_PREFIX`] and a name.
    pub fn uri(&self) -> &'static str {
        self.uri
    }

    /// The `title`: the same for every occurrence of the type.
    pub fn title(&self) -> &'static str {
        self.title
    }

    /// What an upstream's failure, `err`, means for the caller of whoever
    /// called that upstream (a server, a gateway): the status to answer and
    /// the type.
    ///
    /// | `err` | status | type |
    /// |---|---|---|
    /// | `NotFound` | 404 | [`NOT_FOUND`](Self::NOT_FOUND) |
    /// | `RateLimited` (the upstream's 429, or kneo's own, unsent) | 429 | [`RATE_LIMITED`](Self::RATE_LIMITED) |
    /// | `Conflict`, `IdempotencyMismatch` | 409 | [`CONFLICT`](Self::CONFLICT) |
    /// | `Network` that timed out | 504 | [`UPSTREAM_TIMEOUT`](Self::UPSTREAM_TIMEOUT) |
    /// | any other `Network` | 502 | [`UPSTREAM_UNREACHABLE`](Self::UPSTREAM_UNREACHABLE) |
    /// | anything else (auth, a 5xx, decode) | 502 | [`UPSTREAM_FAILED`](Self::UPSTREAM_FAILED) |
    pub fn of_error(err: &Error) -> (StatusCode, ProblemType) {
        match err.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, ProblemType::NOT_FOUND),
            ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, ProblemType::RATE_LIMITED),
            ErrorKind::Conflict | ErrorKind::IdempotencyMismatch => {
                (StatusCode::CONFLICT, ProblemType::CONFLICT)
            }
            ErrorKind::Network if err.is_timeout() => {
                (StatusCode::GATEWAY_TIMEOUT, ProblemType::UPSTREAM_TIMEOUT)
            }
            ErrorKind::Network => (StatusCode::BAD_GATEWAY, ProblemType::UPSTREAM_UNREACHABLE),
            _ => (StatusCode::BAD_GATEWAY, ProblemType::UPSTREAM_FAILED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_under_the_one_prefix_and_distinct() {
        let mut uris: Vec<_> = ProblemType::ALL.iter().map(ProblemType::uri).collect();
        for uri in &uris {
            let name = uri.strip_prefix(TYPE_PREFIX).expect("the one scheme");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{uri}"
            );
        }
        uris.sort_unstable();
        uris.dedup();
        assert_eq!(uris.len(), ProblemType::ALL.len());
    }
}
