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
