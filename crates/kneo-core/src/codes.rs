//! The string codes [`Error::code`](crate::Error::code) returns when the server
//! did not send one of its own.
//!
//! Servers are free to send any code; these are only the defaults kneo falls
//! back to, so match on them with a catch-all arm.
//!
//! ```
//! use kneo_core::codes;
//!
//! fn advice(code: &str) -> &'static str {
//!     match code {
//!         codes::RATE_LIMIT_EXCEEDED => "slow down",
//!         codes::AUTHENTICATION_ERROR => "check the API key",
//!         _ => "see the error body",
//!     }
//! }
//! assert_eq!(advice("rate_limit_exceeded"), "slow down");
//! assert_eq!(advice("some_server_code"), "see the error body");
//! ```

/// No HTTP response: connect, DNS, TLS, reset.
pub const API_CONNECTION: &str = "api_connection";
/// A timeout: ours (per attempt, deadline) or a 504 from the server.
pub const API_TIMEOUT: &str = "api_timeout";
/// HTTP 401.
pub const AUTHENTICATION_ERROR: &str = "authentication_error";
/// HTTP 403.
pub const PERMISSION_DENIED: &str = "permission_denied";
/// HTTP 404.
pub const NOT_FOUND: &str = "not_found";
/// HTTP 409 without an idempotency key on the request.
pub const CONFLICT: &str = "conflict";
/// An idempotency key was reused with a different payload.
pub const IDEMPOTENCY_KEY_MISMATCH: &str = "idempotency_key_mismatch";
/// The server is still processing the original request for this idempotency key.
///
/// Sent by servers, not a kneo default; it turns a 409 into a retryable
/// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict).
pub const IDEMPOTENCY_KEY_IN_USE: &str = "idempotency_key_in_use";
/// HTTP 429.
pub const RATE_LIMIT_EXCEEDED: &str = "rate_limit_exceeded";
/// Refused before sending: the server's rate-limit headers said nothing is
/// left, and the reset is further away than the caller will wait.
pub const RATE_LIMITED_LOCALLY: &str = "rate_limited_locally";
/// HTTP 5xx other than 504.
pub const SERVER_ERROR: &str = "server_error";
/// HTTP 402.
pub const INSUFFICIENT_CREDITS: &str = "insufficient_credits";
/// Any other non-success status.
pub const HTTP_ERROR: &str = "http_error";
/// A success response whose body could not be decoded into the expected type.
pub const DECODE_ERROR: &str = "decode_error";
/// The request could not be built; nothing was sent.
pub const INVALID_REQUEST: &str = "invalid_request";
/// A keyed request reached a server that requires an `Idempotency-Key`, without one (HTTP 400).
pub const IDEMPOTENCY_KEY_MISSING: &str = "idempotency_key_missing";
/// The `Idempotency-Key` header was empty, malformed, too long or sent twice (HTTP 400).
pub const IDEMPOTENCY_KEY_INVALID: &str = "idempotency_key_invalid";
/// The server's idempotency store could not be reached, so the request was not run (HTTP 503, retryable).
pub const IDEMPOTENCY_STORE_UNAVAILABLE: &str = "idempotency_store_unavailable";
/// The request for this idempotency key was processed, but its response was
/// too large to keep, so it cannot be replayed (HTTP 410; not retryable).
pub const IDEMPOTENCY_RESPONSE_NOT_STORED: &str = "idempotency_response_not_stored";
/// The request body is larger than the server accepts (HTTP 413).
pub const REQUEST_BODY_TOO_LARGE: &str = "request_body_too_large";
/// A gateway sent the request upstream and lost the answer (the connection
/// was cut, or the attempt timed out and its late answer never came): the
/// request **may have been applied**. Recorded under the request's
/// idempotency key so that a retry is told so instead of running it again
/// (HTTP 502 or 504, with `x-should-retry: false`).
pub const UPSTREAM_OUTCOME_UNKNOWN: &str = "upstream_outcome_unknown";
