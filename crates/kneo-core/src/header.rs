//! The header names kneo reads and writes, in one place: the two a request
//! carries for its identity, and the two a server's error answer may carry
//! about itself.

use http::header::HeaderName;

/// The `X-Request-ID` header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// A server's machine-readable error code, when it sends it as a header.
pub const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
/// A server's explicit retry advice (`true` or `false`), which overrides the status rule.
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
