//! [`ProblemResponse`]: an RFC 9457 problem as a response, the one writer of
//! kneo's problem answers.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{ProblemType, PROBLEM_JSON};
use crate::{is_valid_request_id, Error, X_ERROR_CODE, X_REQUEST_ID};

/// An RFC 9457 problem response: `type`, `title`, `status`, `detail`, the
/// extension members `code` (always), `request_id` (when known) and any
/// others added, plus `Retry-After` and `X-Request-ID` headers when set.
///
/// kneo's client reads `code` as [`Error::code`] and the kind from the
/// status (and, for a 409 or 422 on a keyed request, from the code).
///
/// ```
/// use http::StatusCode;
/// use kneo_core::problem::{ProblemResponse, ProblemType};
///
/// let problem = ProblemResponse::new(StatusCode::CONFLICT, "idempotency_key_in_use")
///     .problem_type(ProblemType::IDEMPOTENCY_KEY_IN_USE)
///     .detail("A request with this Idempotency-Key is still being processed.")
///     .retry_after(std::time::Duration::from_secs(1));
/// let res: http::Response<bytes::Bytes> = problem.to_response();
/// assert_eq!(res.status(), StatusCode::CONFLICT);
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// assert_eq!(res.headers()["retry-after"], "1");
/// let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
/// assert_eq!(body["type"], "urn:kneo:problem:idempotency-key-in-use");
/// assert_eq!(body["title"], "Request in progress");
/// assert_eq!(body["code"], "idempotency_key_in_use");
/// assert_eq!(body["status"], 409);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemResponse {
    status: StatusCode,
    r#type: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Cow<'static, str>,
    code: Cow<'static, str>,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    extensions: Map<String, Value>,
}

impl ProblemResponse {
    /// A problem with `status` and `code`, of type `about:blank` and titled
    /// with the status's reason phrase (RFC 9457 §4.2.1), until given a
    /// [`problem_type`](Self::problem_type).
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>) -> Self {
        ProblemResponse {
            status,
            r#type: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: Cow::Borrowed(""),
            code: code.into(),
            request_id: None,
            retry_after: None,
            extensions: Map::new(),
        }
    }

    /// Sets the `type` and the `title` to one of kneo's.
    pub fn problem_type(mut self, problem_type: ProblemType) -> Self {
        self.r#type = Cow::Borrowed(problem_type.uri());
        self.title = Cow::Borrowed(problem_type.title());
        self
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

    /// Sets the `type` URI (one of the user's own; kneo's are set with
    /// [`problem_type`](Self::problem_type)).
    pub fn type_uri(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.r#type = uri.into();
        self
    }

    /// Sends `Retry-After`: whole seconds, rounded up (never early), at least 1.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Sends the request id as the `request_id` member and `X-Request-ID`.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Adds an extension member (`attempts`, say). The members this type
    /// writes itself (`type`, `title`, `status`, `detail`, `code`,
    /// `request_id`) are not replaced.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.into(), value.into());
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

    /// The `type` URI.
    pub fn type_uri_str(&self) -> &str {
        &self.r#type
    }

    /// The body as a JSON object.
    pub fn to_json(&self) -> Value {
        let mut body = self.extensions.clone();
        body.insert("type".into(), json!(self.r#type));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        if self.detail.is_empty() {
            body.remove("detail");
        } else {
            body.insert("detail".into(), json!(self.detail));
        }
        body.insert("code".into(), json!(self.code));
        match &self.request_id {
            Some(id) => body.insert("request_id".into(), json!(id)),
            None => body.remove("request_id"),
        };
        Value::Object(body)
    }

    /// The HTTP response, with any body type that can be made from bytes:
    /// `application/problem+json`, `Cache-Control: no-store` (an error is
    /// about this one request), the code in `x-error-code` as well as in the
    /// body, and the headers set.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let body = Bytes::from(self.to_json().to_string());
        let mut res = Response::new(B::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert(X_REQUEST_ID, id);
        }
        // The code travels with the status too: a client whose body was cut
        // off (or that never reads it) still learns it.
        if let Some(code) = Some(self.code.as_ref())
            .filter(|code| is_valid_request_id(code.as_bytes()))
            .and_then(|code| HeaderValue::from_str(code).ok())
        {
            headers.insert(X_ERROR_CODE, code);
        }
        res
    }

    /// What an upstream's failure means for this server's caller, as a
    /// problem: the status and type of [`ProblemType::of_error`].
    ///
    /// The upstream's code, request id and `Retry-After` are kept; a 4xx
    /// keeps its message as `detail`, a 5xx says only that the upstream
    /// failed (a server's credentials or its upstream's internals are not its
    /// caller's to see).
    ///
    /// ```
    /// use http::{Method, Response, StatusCode};
    /// use kneo_core::{Error, Sent};
    /// use kneo_core::problem::ProblemResponse;
    ///
    /// let (parts, ()) = Response::builder().status(500).body(()).unwrap().into_parts();
    /// let err = Error::from_response(&parts, b"db password wrong", false, Sent::new(Method::GET).with_request_id("r-1"));
    /// let problem = ProblemResponse::from_error(&err);
    /// assert_eq!(problem.status(), StatusCode::BAD_GATEWAY);
    /// assert_eq!(problem.to_json()["type"], "urn:kneo:problem:upstream-failed");
    /// assert!(!problem.to_json().to_string().contains("password"));
    /// assert_eq!(problem.to_json()["request_id"], "r-1");
    /// ```
    pub fn from_error(err: &Error) -> Self {
        let (status, problem_type) = ProblemType::of_error(err);
        let detail = if status.is_server_error() {
            "The upstream service failed; quote the request id when reporting this.".to_owned()
        } else {
            err.message().to_owned()
        };
        let mut problem = ProblemResponse::new(status, err.code().to_owned())
            .problem_type(problem_type)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_rounded_up_and_extensions_do_not_replace_members() {
        let res: Response<Bytes> = ProblemResponse::new(StatusCode::SERVICE_UNAVAILABLE, "busy")
            .retry_after(Duration::from_millis(1_200))
            .extension("attempts", 3)
            .extension("code", "forged")
            .to_response();
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(res.headers()[X_ERROR_CODE], "busy");
        let body: Value = serde_json::from_slice(res.body()).expect("JSON");
        assert_eq!(body["attempts"], 3);
        assert_eq!(body["code"], "busy");
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Service Unavailable");
        assert!(body.get("request_id").is_none() && body.get("detail").is_none());
    }
}
