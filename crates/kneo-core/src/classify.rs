//! What a status and headers say, read without building an error: success
//! or failure, the status → kind table, the server's retry advice, and the
//! statuses that say a request was not processed. Error mapping, the retry
//! rule and the outcome rule all read them here.

use http::header::HeaderMap;
use http::StatusCode;

use crate::codes;
use crate::header::{X_ERROR_CODE, X_SHOULD_RETRY};
use crate::kind::ErrorKind;
use crate::rate_limit;
use crate::sent::{is_conditional, token};

/// `true` when a response with `status` is the answer the caller asked for,
/// and not an [`Error`](crate::Error): the one definition of failure, used by error
/// mapping, the retry policy and the client.
///
/// 1xx and 2xx succeed; a `304 Not Modified` succeeds when the request was
/// conditional (see [`is_conditional`]): it is the answer a conditional GET
/// asks for. Every other 3xx, every 4xx and 5xx is a failure (a redirect
/// layer below kneo's stack follows redirects before kneo sees them).
///
/// ```
/// use http::StatusCode;
/// use kneo_core::is_success;
///
/// assert!(is_success(StatusCode::CREATED, false));
/// assert!(is_success(StatusCode::NOT_MODIFIED, true));
/// assert!(!is_success(StatusCode::NOT_MODIFIED, false));
/// assert!(!is_success(StatusCode::FOUND, true));
/// ```
pub fn is_success(status: StatusCode, conditional: bool) -> bool {
    status.is_informational()
        || status.is_success()
        || (conditional && status == StatusCode::NOT_MODIFIED)
}

/// [`is_success`] for a response to a request with `request_headers`; the
/// headers are looked at only for a 304.
pub fn is_success_for(status: StatusCode, request_headers: &HeaderMap) -> bool {
    is_success(
        status,
        status == StatusCode::NOT_MODIFIED && is_conditional(request_headers),
    )
}

/// The server's `x-should-retry: true|false` advice; anything else is no advice.
pub fn should_retry_advice(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get(X_SHOULD_RETRY)?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The status → kind table, with kneo's default code for each row.
///
/// `keyed` says the request carried an idempotency key; `server_code` and
/// `problem_type` are what the response said of itself, when anything;
/// `exhausted`, that its rate-limit headers say nothing is left.
pub(crate) fn kind_for(
    status: StatusCode,
    keyed: bool,
    server_code: Option<&str>,
    problem_type: Option<&str>,
    exhausted: bool,
) -> (ErrorKind, &'static str) {
    let names_idempotency = |s: &str| s.to_ascii_lowercase().contains("idempotency");
    match status.as_u16() {
        401 => (ErrorKind::Auth, codes::AUTHENTICATION_ERROR),
        402 => (ErrorKind::Status, codes::INSUFFICIENT_CREDITS),
        // GitHub answers its primary rate limit with a 403 that says so in
        // its rate-limit headers: that is a rate limit, not a permission.
        403 if exhausted => (ErrorKind::RateLimited, codes::RATE_LIMIT_EXCEEDED),
        403 => (ErrorKind::Permission, codes::PERMISSION_DENIED),
        404 => (ErrorKind::NotFound, codes::NOT_FOUND),
        409 if !keyed => (ErrorKind::Conflict, codes::CONFLICT),
        409 if server_code == Some(codes::IDEMPOTENCY_KEY_IN_USE) => {
            (ErrorKind::Conflict, codes::IDEMPOTENCY_KEY_IN_USE)
        }
        409 => (
            ErrorKind::IdempotencyMismatch,
            codes::IDEMPOTENCY_KEY_MISMATCH,
        ),
        422 if keyed
            && (server_code.is_some_and(names_idempotency)
                || problem_type.is_some_and(names_idempotency)) =>
        {
            (
                ErrorKind::IdempotencyMismatch,
                codes::IDEMPOTENCY_KEY_MISMATCH,
            )
        }
        429 => (ErrorKind::RateLimited, codes::RATE_LIMIT_EXCEEDED),
        504 => (ErrorKind::Server, codes::API_TIMEOUT),
        500..=599 => (ErrorKind::Server, codes::SERVER_ERROR),
        _ => (ErrorKind::Status, codes::HTTP_ERROR),
    }
}

/// `true` for the statuses that say the request was not processed: `429`
/// and `503` (RFC 9110 §15.6.4, RFC 6585 §4). Anything else may have been
/// applied.
///
/// ```
/// use http::StatusCode;
/// use kneo_core::delivery::is_not_processed;
///
/// assert!(is_not_processed(StatusCode::SERVICE_UNAVAILABLE));
/// assert!(!is_not_processed(StatusCode::BAD_GATEWAY), "a gateway may have sent it");
/// ```
pub fn is_not_processed(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The kind a response's status and headers alone give (no body read): for
/// the retry policy judging a raw response.
pub(crate) fn kind_from_headers(
    status: StatusCode,
    headers: &HeaderMap,
    keyed: bool,
) -> (ErrorKind, Option<String>) {
    let code = token(headers.get(X_ERROR_CODE).map(|v| v.as_bytes()));
    let exhausted = status == StatusCode::FORBIDDEN
        && rate_limit::from_headers(headers).is_some_and(|rl| rl.is_exhausted());
    let (kind, _) = kind_for(status, keyed, code.as_deref(), None, exhausted);
    (kind, code)
}
