//! The one place a response becomes an [`Error`]: what counts as failure, the
//! status → kind table, and reading the server's code, message and problem
//! details out of an error body.

use http::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;

use crate::body::ErrorBody;
use crate::classify::kind_for;
pub use crate::classify::{is_success, is_success_for, should_retry_advice};
use crate::error::{Answer, Error};
use crate::header::X_ERROR_CODE;
use crate::problem::{Problem, PROBLEM_JSON};
use crate::rate_limit::{self, RateLimit};
pub use crate::sent::is_conditional;
use crate::sent::{token, Sent};
use crate::{retry_after, text};

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
    /// status becomes an [`ErrorKind`](crate::ErrorKind).
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
        let request_id = token(headers.get(sent.request_id_header()).map(|v| v.as_bytes()));
        // `Retry-After` keeps precedence; an exhausted limit's reset stands in.
        let retry_after = retry_after::from_headers(headers).or_else(|| {
            rate_limit
                .as_ref()
                .filter(|rl| rl.is_exhausted())
                .and_then(RateLimit::reset_after)
        });
        let answer = Answer {
            status,
            code: server_code,
            body,
            body_truncated: truncated,
            problem,
            request_id,
            retry_after,
            rate_limit,
            should_retry: should_retry_advice(headers),
        };
        Error::from_answer(kind, default_code, message, sent, answer)
    }
}
