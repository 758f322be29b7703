//! The one place a response becomes an [`Error`]: what counts as failure, the
//! status → kind table, and reading the server's code, message and problem
//! details out of an error body.

use http::header::{HeaderMap, CONTENT_TYPE, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::StatusCode;
use serde_json::Value;

use crate::body::ErrorBody;
use crate::error::{Error, ErrorKind, Inner};
use crate::problem::{Problem, PROBLEM_JSON};
use crate::rate_limit::{self, RateLimit};
use crate::sent::{token, Sent, X_ERROR_CODE, X_SHOULD_RETRY};
use crate::{codes, retry_after, text};

/// `true` when a response with `status` is the answer the caller asked for,
/// and not an [`Error`]: the one definition of failure, used by error
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

/// `true` when request headers make the request conditional in the way a
/// `304 Not Modified` answers: `If-None-Match` or `If-Modified-Since`.
pub fn is_conditional(request_headers: &HeaderMap) -> bool {
    let conditional = |name: &http::HeaderName| name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE;
    // A scan of a few names is cheaper than two hash lookups; this runs on
    // every request.
    if request_headers.keys_len() <= 8 {
        request_headers.keys().any(conditional)
    } else {
        request_headers.contains_key(IF_NONE_MATCH)
            || request_headers.contains_key(IF_MODIFIED_SINCE)
    }
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

/// The server's own code: the first valid one of an `x-error-code` header,
/// the body's `{"error":{"code":..}}` and its `{"code":..}` (a problem's
/// `code` extension). An invalid one counts as absent.
fn server_code(
    headers: &HeaderMap,
    json: Option<&serde_json::Map<String, Value>>,
) -> Option<String> {
    token(headers.get(X_ERROR_CODE).map(|v| v.as_bytes())).or_else(|| {
        let o = json?;
        let nested = o
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str);
        let top = o.get("code").and_then(Value::as_str);
        token(nested.map(str::as_bytes)).or_else(|| token(top.map(str::as_bytes)))
    })
}

/// `true` when the response says its body is `application/problem+json`.
fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(PROBLEM_JSON))
}

/// The most specific message the body offers, on one line and bounded.
fn message_from_body(body: &ErrorBody, problem: Option<&Problem>) -> Option<String> {
    fn str_of(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str)
    }
    // Borrowed, not copied: a text body may be as long as the body cap.
    let text = match body {
        ErrorBody::Json(v) => str_of(v.get("error").and_then(|e| e.get("message")))
            .or_else(|| str_of(v.get("message")))
            .or_else(|| problem.and_then(|p| p.detail.as_deref().or(p.title.as_deref())))
            .or_else(|| str_of(v.get("detail")))
            .or_else(|| str_of(v.get("error"))),
        ErrorBody::Text(t) => Some(t.as_str()),
        _ => None,
    }?;
    let line = text::one_line(text);
    (!line.is_empty()).then_some(line)
}

impl Error {
    /// Maps a non-success response to an error. This is the only place a
    /// status becomes an [`ErrorKind`].
    ///
    /// `body` is the response body as read, up to the caller's cap;
    /// `truncated` says the cap cut it short. `sent` is what the request
    /// carried: the key decides between Conflict and IdempotencyMismatch.
    pub fn from_response(
        parts: &http::response::Parts,
        body: &[u8],
        truncated: bool,
        sent: Sent,
    ) -> Error {
        let status = parts.status;
        let headers = &parts.headers;
        let body = ErrorBody::from_bytes(body, truncated);
        let json = body.as_json().and_then(Value::as_object);
        let problem = json
            .filter(|_| is_problem(headers))
            .map(|o| Problem::from_json(o, status));
        let server_code = server_code(headers, json);
        let rate_limit = rate_limit::from_headers(headers);
        let (kind, default_code) = kind_for(
            status,
            sent.idempotency_key().is_some(),
            server_code.as_deref(),
            problem.as_ref().map(|p| p.r#type.as_str()),
            rate_limit.as_ref().is_some_and(RateLimit::is_exhausted),
        );
        let message = message_from_body(&body, problem.as_ref())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        let request_id = sent.reported_request_id(headers);

        let mut inner = Inner::new(kind, default_code, message, sent);
        if let Some(code) = server_code {
            inner.code = code.into();
        }
        inner.status = Some(status);
        inner.body = body;
        inner.body_truncated = truncated;
        inner.problem = problem;
        inner.request_id = request_id;
        // `Retry-After` keeps precedence; an exhausted limit's reset stands in.
        inner.retry_after = retry_after::from_headers(headers).or_else(|| {
            rate_limit
                .as_ref()
                .filter(|rl| rl.is_exhausted())
                .and_then(RateLimit::reset_after)
        });
        inner.rate_limit = rate_limit;
        inner.should_retry = should_retry_advice(headers);
        Error::from_inner(inner)
    }
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
