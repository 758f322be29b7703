//! [`ErrorKind`]: what went wrong, for callers to `match` on.

use std::fmt;

/// What went wrong, for callers to `match` on.
///
/// New kinds may be added, so a `match` needs a catch-all arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No HTTP response: DNS, connect, TLS, reset, timeout.
    Network,
    /// HTTP 401: the credentials are missing, invalid or revoked.
    Auth,
    /// HTTP 403: the credentials are valid but lack the permission.
    Permission,
    /// HTTP 404.
    NotFound,
    /// HTTP 409 that is not an idempotency-key mismatch.
    Conflict,
    /// An idempotency key was reused with a different payload (409 or 422 with a key).
    IdempotencyMismatch,
    /// HTTP 429; see [`Error::retry_after`](crate::Error::retry_after).
    RateLimited,
    /// HTTP 5xx.
    Server,
    /// Any other non-success status.
    Status,
    /// A success response whose body could not be decoded into the expected type.
    Decode,
    /// The request could not be built (an invalid URL or header); nothing was sent.
    Request,
}

impl ErrorKind {
    /// The kind as a stable snake_case string (`"not_found"`, `"rate_limited"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Network => "network",
            ErrorKind::Auth => "auth",
            ErrorKind::Permission => "permission",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::IdempotencyMismatch => "idempotency_mismatch",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::Status => "status",
            ErrorKind::Decode => "decode",
            ErrorKind::Request => "request",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
