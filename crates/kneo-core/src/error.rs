//! [`Error`], [`ErrorKind`] and the one place a response becomes an error.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, CONTENT_TYPE};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::body::ErrorBody;
use crate::problem::{Problem, PROBLEM_JSON};
use crate::{codes, retry_after, Attempt};

/// A boxed error, as tower and hyper use.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The `X-Request-ID` header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// A server's machine-readable error code, when it sends it as a header.
pub const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
/// A server's explicit retry advice (`true` or `false`), which overrides the status rule.
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// The longest message kept from a body or an error chain, in characters.
const MESSAGE_CAP: usize = 300;
/// The longest server code or request id kept.
const TOKEN_CAP: usize = 128;
/// The longest idempotency key kept (Stripe allows 255; some allow more).
const KEY_CAP: usize = 1024;

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
    /// HTTP 429; see [`Error::retry_after`].
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

/// What the request sent, as far as error mapping cares.
///
/// ```
/// use http::Method;
/// use kneo_core::Sent;
///
/// let sent = Sent::new(Method::POST).request_id("req-1").idempotency_key("key-1");
/// assert_eq!(sent.method(), Some(&Method::POST));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Sent {
    method: Option<Method>,
    request_id: Option<String>,
    idempotency_key: Option<String>,
    /// Where the server echoes the request id; `None` for `X-Request-ID`.
    request_id_header: Option<HeaderName>,
}

impl Sent {
    /// A request sent with `method`, carrying no id and no key.
    pub fn new(method: Method) -> Self {
        Sent {
            method: Some(method),
            request_id: None,
            idempotency_key: None,
            request_id_header: None,
        }
    }

    /// Reads the request id (from `request_id_header`) and the `Idempotency-Key`
    /// from request headers. A server's echo of the id is then looked for in
    /// `request_id_header` too.
    pub fn from_headers(
        method: &Method,
        headers: &HeaderMap,
        request_id_header: &HeaderName,
    ) -> Self {
        Sent {
            method: Some(method.clone()),
            request_id: token(headers.get(request_id_header).map(|v| v.as_bytes())),
            idempotency_key: headers
                .get(IDEMPOTENCY_KEY)
                .map(|v| v.as_bytes())
                .filter(|v| v.len() <= KEY_CAP && v.iter().all(u8::is_ascii_graphic))
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            request_id_header: Some(request_id_header.clone()),
        }
    }

    /// Sets the request id that was sent.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the idempotency key that was sent.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The request method (`None` for [`Sent::default`]: not known).
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }
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

/// `true` for the methods RFC 9110 §9.2.2 calls idempotent.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `true` when `value` is acceptable as a request id: 1 to 128 visible ASCII
/// characters, no spaces or control characters (so nothing can be injected
/// into a header or a log line through it).
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=TOKEN_CAP).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic())
}

/// A header value kept as an id or key: valid tokens only, else `None`.
fn token(value: Option<&[u8]>) -> Option<String> {
    let v = value?;
    if is_valid_request_id(v) {
        // ASCII graphic bytes are valid UTF-8.
        Some(String::from_utf8_lossy(v).into_owned())
    } else {
        None
    }
}

/// The error kneo's timeouts put at the bottom of a source chain.
///
/// Only kneo builds it; [`Error::is_timeout`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {:.2}s", .0.as_secs_f64())]
pub struct TimedOut(Duration);

impl TimedOut {
    /// How long was waited before giving up.
    pub fn after(&self) -> Duration {
        self.0
    }
}

/// The one error every kneo call fails with.
///
/// It is opaque, one pointer wide, and cheap to move: match on
/// [`kind()`](Error::kind), read the context through the accessors. See the
/// [crate docs](crate) for an example.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    status: Option<StatusCode>,
    code: Cow<'static, str>,
    message: String,
    body: ErrorBody,
    body_truncated: bool,
    problem: Option<Problem>,
    request_id: Option<String>,
    idempotency_key: Option<String>,
    retry_after: Option<Duration>,
    should_retry: Option<bool>,
    method: Option<Method>,
    connect: bool,
    source: Option<BoxError>,
    history: Vec<Attempt>,
}

impl Inner {
    fn new(kind: ErrorKind, code: &'static str, message: String) -> Self {
        Inner {
            kind,
            status: None,
            code: Cow::Borrowed(code),
            message,
            body: ErrorBody::Empty,
            body_truncated: false,
            problem: None,
            request_id: None,
            idempotency_key: None,
            retry_after: None,
            should_retry: None,
            method: None,
            connect: false,
            source: None,
            history: Vec::new(),
        }
    }
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

        let is_problem = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(PROBLEM_JSON));
        let problem = json
            .filter(|_| is_problem)
            .map(|o| Problem::from_json(o, status));

        let server_code = token(headers.get(X_ERROR_CODE).map(|v| v.as_bytes())).or_else(|| {
            let o = json?;
            let nested = o
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(Value::as_str);
            let top = o.get("code").and_then(Value::as_str);
            token(nested.or(top).map(str::as_bytes))
        });

        let has_key = sent.idempotency_key.is_some();
        let names_idempotency = |s: &str| s.to_ascii_lowercase().contains("idempotency");
        let (kind, default_code) = match status.as_u16() {
            401 => (ErrorKind::Auth, codes::AUTHENTICATION_ERROR),
            402 => (ErrorKind::Status, codes::INSUFFICIENT_CREDITS),
            403 => (ErrorKind::Permission, codes::PERMISSION_DENIED),
            404 => (ErrorKind::NotFound, codes::NOT_FOUND),
            409 if !has_key => (ErrorKind::Conflict, codes::CONFLICT),
            409 if server_code.as_deref() == Some(codes::IDEMPOTENCY_KEY_IN_USE) => {
                (ErrorKind::Conflict, codes::IDEMPOTENCY_KEY_IN_USE)
            }
            409 => (
                ErrorKind::IdempotencyMismatch,
                codes::IDEMPOTENCY_KEY_MISMATCH,
            ),
            422 if has_key
                && (server_code.as_deref().is_some_and(names_idempotency)
                    || problem
                        .as_ref()
                        .is_some_and(|p| names_idempotency(&p.r#type))) =>
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
        };

        let message = message_from_body(&body, problem.as_ref())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());

        let echo = match &sent.request_id_header {
            Some(header) => headers.get(header),
            None => headers.get(X_REQUEST_ID),
        };
        let echoed = token(echo.map(|v| v.as_bytes()));
        let should_retry = should_retry_advice(headers);

        let mut inner = Inner::new(kind, default_code, message);
        if let Some(code) = server_code {
            inner.code = Cow::Owned(code);
        }
        inner.status = Some(status);
        inner.body = body;
        inner.body_truncated = truncated;
        inner.problem = problem;
        inner.request_id = echoed.or(sent.request_id);
        inner.idempotency_key = sent.idempotency_key;
        inner.retry_after = retry_after::from_headers(headers);
        inner.should_retry = should_retry;
        inner.method = sent.method;
        Error(Box::new(inner))
    }

    /// A transport failure: no HTTP response arrived.
    ///
    /// `source` is kept as [`source()`](StdError::source). Whether the request
    /// never left ([`is_connect`](Error::is_connect)) and whether it timed out
    /// ([`is_timeout`](Error::is_timeout)) is read from the source chain;
    /// callers that know better say so with [`Error::connect`].
    pub fn network(source: impl Into<BoxError>, sent: Sent) -> Error {
        let source = source.into();
        let connect = chain(&*source).any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                use std::io::ErrorKind as Io;
                matches!(
                    io.kind(),
                    Io::ConnectionRefused
                        | Io::AddrNotAvailable
                        | Io::HostUnreachable
                        | Io::NetworkUnreachable
                )
            })
        });
        let timeout = chain(&*source).any(is_timeout_error);
        let code = if timeout {
            codes::API_TIMEOUT
        } else {
            codes::API_CONNECTION
        };
        let mut inner = Inner::new(ErrorKind::Network, code, chain_message(&*source));
        inner.connect = connect;
        inner.request_id = sent.request_id;
        inner.idempotency_key = sent.idempotency_key;
        inner.method = sent.method;
        inner.source = Some(source);
        Error(Box::new(inner))
    }

    /// Marks a network error as one where the request never left this host
    /// (connect, DNS, TLS), so it is always safe to retry.
    pub fn connect(mut self) -> Error {
        self.0.connect = true;
        self
    }

    /// A timeout of `after` raised by kneo's own timers, as a network error.
    pub fn timeout(after: Duration, sent: Sent) -> Error {
        Error::network(TimedOut(after), sent)
    }

    /// A success response whose body did not decode into the expected type.
    pub fn decode(source: impl Into<BoxError>, status: StatusCode, sent: Sent) -> Error {
        let source = source.into();
        let message = format!("response body did not decode: {}", chain_message(&*source));
        let mut inner = Inner::new(ErrorKind::Decode, codes::DECODE_ERROR, message);
        inner.status = Some(status);
        inner.request_id = sent.request_id;
        inner.idempotency_key = sent.idempotency_key;
        inner.method = sent.method;
        inner.source = Some(source);
        Error(Box::new(inner))
    }

    /// A request that could not be built (invalid URL, header or body); nothing was sent.
    pub fn invalid_request(source: impl Into<BoxError>) -> Error {
        let source = source.into();
        let mut inner = Inner::new(
            ErrorKind::Request,
            codes::INVALID_REQUEST,
            chain_message(&*source),
        );
        inner.source = Some(source);
        Error(Box::new(inner))
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The HTTP status, or `None` when no response arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.0.status
    }

    /// A string code for programmatic dispatch: the server's own code when the
    /// body (`{"error":{"code":..}}`, `{"code":..}`, a problem's `code`) or an
    /// `x-error-code` header gave one, else kneo's default for the kind (see
    /// [`codes`]).
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// A short human-readable message (bounded; never the whole body).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The error response body: JSON, text, or empty.
    pub fn body(&self) -> &ErrorBody {
        &self.0.body
    }

    /// `true` when the body was larger than the cap and was cut short.
    pub fn body_truncated(&self) -> bool {
        self.0.body_truncated
    }

    /// The RFC 9457 problem details, when the response was `application/problem+json`.
    pub fn problem(&self) -> Option<&Problem> {
        self.0.problem.as_ref()
    }

    /// The server's echo of the request id (in `X-Request-ID`, or the header
    /// the id was sent in) when it sent one, else the id the request carried.
    pub fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// The `Idempotency-Key` the request carried.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }

    /// The server's hint of how long to wait (`Retry-After`, `retry-after-ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// The server's `x-should-retry` advice, when it gave one.
    pub fn should_retry(&self) -> Option<bool> {
        self.0.should_retry
    }

    /// The method of the request that failed, when known.
    pub fn method(&self) -> Option<&Method> {
        self.0.method.as_ref()
    }

    /// How many attempts were made (1 when no retry layer recorded any).
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.0.history.len())
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// Every attempt the retry layer made, oldest first (empty without a retry layer).
    pub fn history(&self) -> &[Attempt] {
        &self.0.history
    }

    /// `true` for [`ErrorKind::Conflict`] and [`ErrorKind::IdempotencyMismatch`]:
    /// a mismatch is a kind of conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::Conflict | ErrorKind::IdempotencyMismatch
        )
    }

    /// `true` when a timeout caused this error: ours, an I/O timeout anywhere
    /// in the source chain, or a 504 from the server.
    pub fn is_timeout(&self) -> bool {
        self.0.status == Some(StatusCode::GATEWAY_TIMEOUT)
            || self
                .0
                .source
                .as_deref()
                .is_some_and(|s| chain(s).any(is_timeout_error))
    }

    /// `true` when the request never left this host (connect, DNS, TLS).
    pub fn is_connect(&self) -> bool {
        self.0.connect
    }

    /// The default retry classification: the server's `x-should-retry` when
    /// present; else connect failures always; other network failures only for
    /// idempotent methods or requests carrying an idempotency key; 429, 502,
    /// 503, 504; and a 409 whose code is `idempotency_key_in_use`.
    pub fn is_retryable(&self) -> bool {
        if let Some(advice) = self.0.should_retry {
            return advice;
        }
        match self.0.kind {
            ErrorKind::Network => self.0.connect || self.is_replay_safe(),
            ErrorKind::RateLimited => true,
            ErrorKind::Server => matches!(self.0.status.map(|s| s.as_u16()), Some(502..=504)),
            ErrorKind::Conflict => self.0.code == codes::IDEMPOTENCY_KEY_IN_USE,
            _ => false,
        }
    }

    /// `true` when sending the request again cannot apply it twice: its method
    /// is idempotent or it carried an idempotency key.
    pub fn is_replay_safe(&self) -> bool {
        self.0.idempotency_key.is_some() || self.0.method.as_ref().is_some_and(is_idempotent)
    }

    /// For middleware: fills the request id and idempotency key when the
    /// error was raised without them (a timeout deep in the stack, say).
    pub fn fill_sent(&mut self, sent: Sent) {
        let inner = &mut *self.0;
        if inner.request_id.is_none() {
            inner.request_id = sent.request_id;
        }
        if inner.idempotency_key.is_none() {
            inner.idempotency_key = sent.idempotency_key;
        }
        if inner.method.is_none() {
            inner.method = sent.method;
        }
    }

    /// For middleware: records the attempts behind this error.
    pub fn set_history(&mut self, history: Vec<Attempt>) {
        self.0.history = history;
    }
}

fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

fn is_timeout_error(e: &(dyn StdError + 'static)) -> bool {
    e.is::<TimedOut>()
        || e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// The source chain as `outer: inner: innermost`, bounded.
fn chain_message(e: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    for (i, e) in chain(e).enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
    }
    bounded(out)
}

fn bounded(mut s: String) -> String {
    if s.chars().count() > MESSAGE_CAP {
        s = s.chars().take(MESSAGE_CAP).collect();
        s.push('…');
    }
    s
}

/// The most specific message the body offers.
fn message_from_body(body: &ErrorBody, problem: Option<&Problem>) -> Option<String> {
    let text = match body {
        ErrorBody::Json(v) => {
            let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
            s(v.get("error").and_then(|e| e.get("message")))
                .or_else(|| s(v.get("message")))
                .or_else(|| problem.and_then(|p| p.detail.clone().or_else(|| p.title.clone())))
                .or_else(|| s(v.get("detail")))
                .or_else(|| s(v.get("error")))
        }
        ErrorBody::Text(t) => Some(t.trim().to_owned()),
        _ => None,
    }?;
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one_line = one_line.trim();
    (!one_line.is_empty()).then(|| bounded(one_line.to_owned()))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.0;
        match (i.kind, i.status) {
            (ErrorKind::Network, _) => write!(f, "network error: {}", i.message)?,
            (ErrorKind::Decode, _) => f.write_str(&i.message)?,
            (ErrorKind::Request, _) => write!(f, "invalid request: {}", i.message)?,
            (_, Some(status)) => {
                write!(f, "HTTP {}", status.as_u16())?;
                if let Some(reason) = status.canonical_reason() {
                    write!(f, " {reason}")?;
                }
                if !i.message.is_empty() && Some(i.message.as_str()) != status.canonical_reason() {
                    write!(f, ": {}", i.message)?;
                }
            }
            (kind, None) => write!(f, "{kind} error: {}", i.message)?,
        }
        write!(f, " (code={}", i.code)?;
        if let Some(id) = &i.request_id {
            write!(f, ", request_id={id}")?;
        }
        if let Some(d) = i.retry_after {
            write!(f, ", retry_after={:.2}s", d.as_secs_f64())?;
        }
        if i.history.len() > 1 {
            write!(f, ", attempts={}", i.history.len())?;
        }
        f.write_str(")")
    }
}

/// Prints the context, never a body nor any header but the id and key.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.0;
        let mut d = f.debug_struct("kneo::Error");
        d.field("kind", &i.kind)
            .field("status", &i.status)
            .field("code", &i.code)
            .field("message", &i.message)
            .field("body", &i.body)
            .field("request_id", &i.request_id)
            .field("idempotency_key", &i.idempotency_key)
            .field("retry_after", &i.retry_after)
            .field("attempts", &i.history.len());
        if let Some(source) = &i.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
