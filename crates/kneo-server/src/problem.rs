//! RFC 9457 `application/problem+json` responses, and the one mapping from a
//! [`kneo_core::Error`] (an upstream's failure) to the response a server
//! sends its own caller.
//!
//! ```
//! use http::StatusCode;
//! use kneo_server::ProblemResponse;
//!
//! let problem = ProblemResponse::new(StatusCode::CONFLICT, "idempotency_key_in_use")
//!     .title("Request in progress")
//!     .detail("A request with this Idempotency-Key is still being processed.")
//!     .retry_after(std::time::Duration::from_secs(1));
//! let res: http::Response<bytes::Bytes> = problem.to_response();
//! assert_eq!(res.status(), StatusCode::CONFLICT);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.headers()["retry-after"], "1");
//! let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
//! assert_eq!(body["code"], "idempotency_key_in_use");
//! assert_eq!(body["status"], 409);
//! ```
//!
//! With the `axum` feature, [`ProblemResponse`] is an `IntoResponse`, and
//! `From<kneo::Error>`, so a handler that calls an upstream through kneo can
//! return `Result<_, ProblemResponse>` and use `?`.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use kneo_core::{Error, ErrorKind, PROBLEM_JSON, X_REQUEST_ID};
use serde_json::{json, Map, Value};

/// The prefix of the `type` URI of every problem this crate makes.
pub const PROBLEM_TYPE_BASE: &str = "https://kneo.example/problems/";

/// An RFC 9457 problem response: `type`, `title`, `status`, `detail`, and the
/// extension members `code` (always) and `request_id` (when known), plus
/// `Retry-After` and `X-Request-ID` headers when set.
///
/// kneo's client reads `code` as [`Error::code`] and the kind from the status
/// (and, for a 409 or 422 on a keyed request, from the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemResponse {
    status: StatusCode,
    r#type: String,
    title: Cow<'static, str>,
    detail: Cow<'static, str>,
    code: Cow<'static, str>,
    request_id: Option<String>,
    retry_after: Option<Duration>,
}

impl ProblemResponse {
    /// A problem with `status` and `code`, typed `PROBLEM_TYPE_BASE + code`,
    /// titled with the status's reason phrase.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>) -> Self {
        let code = code.into();
        ProblemResponse {
            status,
            r#type: format!("{PROBLEM_TYPE_BASE}{code}"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: Cow::Borrowed(""),
            code,
            request_id: None,
            retry_after: None,
        }
    }

    /// Sets the `title`: a short summary of the problem type.
    pub fn title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the `detail`: what happened this time.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Sets the `type` URI.
    pub fn type_uri(mut self, uri: impl Into<String>) -> Self {
        self.r#type = uri.into();
        self
    }

    /// Sends `Retry-After` (whole seconds, at least 1).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Sends the request id as the `request_id` member and `X-Request-ID`.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `code` member.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The body as a JSON object.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), json!(self.r#type));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        if !self.detail.is_empty() {
            body.insert("detail".into(), json!(self.detail));
        }
        body.insert("code".into(), json!(self.code));
        if let Some(id) = &self.request_id {
            body.insert("request_id".into(), json!(id));
        }
        Value::Object(body)
    }

    /// The HTTP response, with any body type that can be made from bytes.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let body = Bytes::from(self.to_json().to_string());
        let mut res = Response::new(B::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(wait) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        }
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert(X_REQUEST_ID, id);
        }
        res
    }

    /// What an upstream's failure means for this server's caller, as a problem.
    ///
    /// | upstream error | status |
    /// |---|---|
    /// | `NotFound` | 404 |
    /// | `RateLimited` | 429, with its `Retry-After` |
    /// | `Conflict`, `IdempotencyMismatch` | 409 |
    /// | `Network` that timed out | 504 |
    /// | anything else (auth, outage, decode) | 502 |
    ///
    /// The upstream's code and request id are kept; a 4xx keeps its message
    /// as `detail`, a 5xx says only that the upstream failed (our credentials
    /// or the upstream's internals are not the caller's to see).
    ///
    /// ```
    /// use http::{Method, Response, StatusCode};
    /// use kneo_core::{Error, Sent};
    /// use kneo_server::ProblemResponse;
    ///
    /// let (parts, ()) = Response::builder().status(500).body(()).unwrap().into_parts();
    /// let err = Error::from_response(&parts, b"db password wrong", false, Sent::new(Method::GET).with_request_id("r-1"));
    /// let problem = ProblemResponse::from_error(&err);
    /// assert_eq!(problem.status(), StatusCode::BAD_GATEWAY);
    /// assert!(!problem.to_json().to_string().contains("password"));
    /// assert_eq!(problem.to_json()["request_id"], "r-1");
    /// ```
    pub fn from_error(err: &Error) -> Self {
        let (status, title) = match err.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            ErrorKind::Conflict | ErrorKind::IdempotencyMismatch => {
                (StatusCode::CONFLICT, "Conflict")
            }
            ErrorKind::Network if err.is_timeout() => {
                (StatusCode::GATEWAY_TIMEOUT, "Upstream timed out")
            }
            _ => (StatusCode::BAD_GATEWAY, "Upstream failed"),
        };
        let detail = if status.is_server_error() {
            "The upstream service failed; quote the request id when reporting this.".to_owned()
        } else {
            err.message().to_owned()
        };
        let mut problem = ProblemResponse::new(status, err.code().to_owned())
            .type_uri(format!("{PROBLEM_TYPE_BASE}{}", err.kind()))
            .title(title)
            .detail(detail);
        if let Some(id) = err.request_id() {
            problem = problem.request_id(id);
        }
        if let Some(wait) = err.retry_after() {
            problem = problem.retry_after(wait);
        }
        problem
    }
}

impl From<Error> for ProblemResponse {
    fn from(err: Error) -> Self {
        ProblemResponse::from_error(&err)
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for ProblemResponse {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response()
    }
}
