//! [`Error`] and [`ErrorKind`]: the type, its constructors for failures
//! without a response, its accessors, `Display` and `Debug`. Responses become
//! errors in [`mapping`](crate::mapping); what was sent lives in [`Sent`].

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::body::ErrorBody;
use crate::kind::ErrorKind;
use crate::problem::Problem;
use crate::rate_limit::RateLimit;
use crate::retry_rule::RetryFacts;
use crate::sent::Sent;
use crate::{codes, text, Attempt};

/// A boxed error, as tower and hyper use.
pub type BoxError = Box<dyn StdError + Send + Sync>;

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
    code: Cow<'static, str>,
    message: String,
    /// What the request carried.
    sent: Sent,
    /// The request id as reported: the server's echo, else the id sent.
    request_id: Option<String>,
    /// What the response said; `None` when none arrived.
    answer: Option<Answer>,
    retry_after: Option<Duration>,
    rate_limit: Option<RateLimit>,
    connect: bool,
    source: Option<BoxError>,
    history: Vec<Attempt>,
}

/// What an error response said, as [`mapping`](crate::mapping) reads it:
/// handed to [`Error::from_answer`] whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The server's own code, when it gave a valid one.
    pub(crate) code: Option<String>,
    pub(crate) body: ErrorBody,
    pub(crate) body_truncated: bool,
    pub(crate) problem: Option<Problem>,
    /// The server's echo of the request id, when well-formed.
    pub(crate) request_id: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) should_retry: Option<bool>,
}

impl Answer {
    /// A response of `status` whose body is not the error's subject.
    fn status_only(status: StatusCode) -> Answer {
        Answer {
            status,
            code: None,
            body: ErrorBody::Empty,
            body_truncated: false,
            problem: None,
            request_id: None,
            retry_after: None,
            rate_limit: None,
            should_retry: None,
        }
    }
}

/// What every error starts from: its kind, kneo's code for it, a message
/// and the request's identity.
fn inner(kind: ErrorKind, code: &'static str, message: String, sent: Sent) -> Inner {
    Inner {
        kind,
        code: Cow::Borrowed(code),
        message,
        request_id: sent.request_id().map(str::to_owned),
        sent,
        answer: None,
        retry_after: None,
        rate_limit: None,
        connect: false,
        source: None,
        history: Vec::new(),
    }
}

/// The body of an error no response came with.
static NO_BODY: ErrorBody = ErrorBody::Empty;

impl Error {
    fn from_inner(inner: Inner) -> Error {
        Error(Box::new(inner))
    }

    /// A non-success response, as [`mapping`](crate::mapping) read it: the
    /// one constructor of an error with a status.
    pub(crate) fn from_answer(
        kind: ErrorKind,
        default_code: &'static str,
        message: String,
        sent: Sent,
        answer: Answer,
    ) -> Error {
        let mut inner = inner(kind, default_code, message, sent);
        if let Some(code) = &answer.code {
            inner.code = Cow::Owned(code.clone());
        }
        if answer.request_id.is_some() {
            inner.request_id.clone_from(&answer.request_id);
        }
        inner.retry_after = answer.retry_after;
        inner.rate_limit.clone_from(&answer.rate_limit);
        inner.answer = Some(answer);
        Error::from_inner(inner)
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
        let code = if chain(&*source).any(is_timeout_error) {
            codes::API_TIMEOUT
        } else {
            codes::API_CONNECTION
        };
        let mut inner = inner(ErrorKind::Network, code, chain_message(&*source), sent);
        inner.connect = connect;
        inner.source = Some(source);
        Error::from_inner(inner)
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
        let message = text::one_line(&format!(
            "response body did not decode: {}",
            chain_message(&*source)
        ));
        let mut inner = inner(ErrorKind::Decode, codes::DECODE_ERROR, message, sent);
        inner.answer = Some(Answer::status_only(status));
        inner.source = Some(source);
        Error::from_inner(inner)
    }

    /// A request refused before it was sent: the last response's rate-limit
    /// headers said nothing is left, and waiting `retry_after` for the reset
    /// is longer than the caller will wait (or would pass its deadline).
    /// [`RateLimited`](ErrorKind::RateLimited) with code
    /// [`RATE_LIMITED_LOCALLY`](codes::RATE_LIMITED_LOCALLY) and no status.
    pub fn throttled(retry_after: Duration, rate_limit: Option<RateLimit>, sent: Sent) -> Error {
        let message = format!(
            "not sent: the server's rate limit is exhausted until {:.2}s from now",
            retry_after.as_secs_f64()
        );
        let mut inner = inner(
            ErrorKind::RateLimited,
            codes::RATE_LIMITED_LOCALLY,
            message,
            sent,
        );
        inner.retry_after = Some(retry_after);
        inner.rate_limit = rate_limit;
        Error::from_inner(inner)
    }

    /// A request that could not be built (invalid URL, header or body); nothing was sent.
    ///
    /// The source's message is shown as is: never build one from a URL or a
    /// header value that may hold a secret.
    pub fn invalid_request(source: impl Into<BoxError>) -> Error {
        let source = source.into();
        let mut inner = inner(
            ErrorKind::Request,
            codes::INVALID_REQUEST,
            chain_message(&*source),
            Sent::default(),
        );
        inner.source = Some(source);
        Error::from_inner(inner)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The HTTP status, or `None` when no response arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.0.answer.as_ref().map(|a| a.status)
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
        self.0.answer.as_ref().map_or(&NO_BODY, |a| &a.body)
    }

    /// `true` when the body was larger than the cap and was cut short.
    pub fn body_truncated(&self) -> bool {
        self.0.answer.as_ref().is_some_and(|a| a.body_truncated)
    }

    /// The RFC 9457 problem details, when the response was `application/problem+json`.
    pub fn problem(&self) -> Option<&Problem> {
        self.0.answer.as_ref()?.problem.as_ref()
    }

    /// The server's echo of the request id (in `X-Request-ID`, or the header
    /// the id was sent in) when it sent one, else the id the request carried.
    pub fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// The `Idempotency-Key` the request carried.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.0.sent.idempotency_key()
    }

    /// The server's hint of how long to wait (`Retry-After`, `retry-after-ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// What the response's rate-limit headers said, when it carried any of
    /// the families [`rate_limit`](crate::rate_limit) understands.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.0.rate_limit.as_ref()
    }

    /// The server's `x-should-retry` advice, when it gave one.
    pub fn should_retry(&self) -> Option<bool> {
        self.0.answer.as_ref()?.should_retry
    }

    /// The method of the request that failed, when known.
    pub fn method(&self) -> Option<&Method> {
        self.0.sent.method()
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
        self.status() == Some(StatusCode::GATEWAY_TIMEOUT)
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

    /// Whether kneo's retry policy, under its default configuration, would
    /// send the request again after this error: the one
    /// [retry rule](crate::retry_rule) with the default status set
    /// (429, 502, 503, 504).
    pub fn is_retryable(&self) -> bool {
        use crate::retry_rule::{is_retryable, DEFAULT_RETRY_STATUSES};
        is_retryable(&RetryFacts::of_error(self), &DEFAULT_RETRY_STATUSES)
    }

    /// `true` when sending the request again cannot apply it twice: its method
    /// is idempotent or it carried an idempotency key.
    pub fn is_replay_safe(&self) -> bool {
        self.0.sent.is_replay_safe()
    }

    /// What the request carried, as the error knows it.
    pub fn sent(&self) -> &Sent {
        &self.0.sent
    }

    /// The same error with the attempts behind it, oldest first: for a
    /// retry layer, which alone knows them (kneo's records them; see
    /// [`history`](Error::history)). Replaces any history the error had.
    pub fn with_history(mut self, history: Vec<Attempt>) -> Error {
        self.0.history = history;
        self
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
    text::one_line(&out)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.0;
        match (i.kind, self.status()) {
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
        if let Some(id) = self.request_id() {
            write!(f, ", request_id={id}")?;
        }
        if let Some(d) = i.retry_after {
            write!(f, ", retry_after={:.2}s", d.as_secs_f64())?;
        }
        if self.attempts() > 1 {
            write!(f, ", attempts={}", self.attempts())?;
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
            .field("status", &self.status())
            .field("code", &i.code)
            .field("message", &i.message)
            .field("body", self.body())
            .field("request_id", &self.request_id())
            .field("idempotency_key", &self.idempotency_key())
            .field("retry_after", &i.retry_after)
            .field("attempts", &self.attempts());
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

impl RetryFacts {
    /// The facts of a mapped error.
    pub fn of_error(e: &Error) -> Self {
        RetryFacts {
            kind: e.kind(),
            status: e.status(),
            advice: e.should_retry(),
            key_in_use: e.code() == codes::IDEMPOTENCY_KEY_IN_USE,
            replay_safe: e.is_replay_safe(),
            connect: e.is_connect(),
        }
    }
}
