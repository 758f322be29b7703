//! What a request sent, as far as errors care: its method, request id and
//! idempotency key, and the rules for telling a well-formed id or key.

use http::header::{HeaderMap, HeaderName};

use crate::header::{IDEMPOTENCY_KEY, X_REQUEST_ID};
use http::Method;

/// The longest server code or request id kept.
pub(crate) const TOKEN_CAP: usize = 128;
/// The longest idempotency key kept (Stripe allows 255; some allow more).
pub(crate) const KEY_CAP: usize = 1024;

/// What the request sent, as far as error mapping cares: kept inside every
/// [`Error`](crate::Error) it describes.
///
/// ```
/// use http::{HeaderMap, HeaderName, Method};
/// use kneo_core::Sent;
///
/// let sent = Sent::new(Method::POST).with_request_id("req-1").with_idempotency_key("key-1");
/// assert_eq!(sent.method(), Some(&Method::POST));
/// assert_eq!(sent.request_id(), Some("req-1"));
/// assert!(sent.is_replay_safe(), "a keyed POST can be sent again");
///
/// // Read from request headers: a malformed id is not kept.
/// let mut headers = HeaderMap::new();
/// headers.insert("request-id", "has spaces".parse().unwrap());
/// let sent = Sent::from_headers(&Method::GET, &headers, &HeaderName::from_static("request-id"));
/// assert_eq!(sent.request_id(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
            ..Sent::default()
        }
    }

    /// Reads the request id (from `request_id_header`) and the `Idempotency-Key`
    /// from request headers, keeping only well-formed values. A server's echo
    /// of the id is then looked for in `request_id_header` too.
    pub fn from_headers(
        method: &Method,
        headers: &HeaderMap,
        request_id_header: &HeaderName,
    ) -> Self {
        Sent {
            method: Some(method.clone()),
            request_id: token(headers.get(request_id_header).map(|v| v.as_bytes())),
            idempotency_key: key(headers.get(IDEMPOTENCY_KEY).map(|v| v.as_bytes())),
            request_id_header: (request_id_header != X_REQUEST_ID)
                .then(|| request_id_header.clone()),
        }
    }

    /// Sets the request id that was sent (ignored unless [well-formed](is_valid_request_id)).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into()).filter(|id| is_valid_request_id(id.as_bytes()));
        self
    }

    /// Sets the idempotency key that was sent (ignored unless 1 to 1,024
    /// visible ASCII characters).
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into()).filter(|k| is_valid_key(k.as_bytes()));
        self
    }

    /// Sets the header the request id was sent in (default `X-Request-ID`),
    /// where a server's echo of it is looked for.
    pub fn with_request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id_header = (header != X_REQUEST_ID).then_some(header);
        self
    }

    /// The request method (`None` for [`Sent::default`]: not known).
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// The request id that was sent.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The idempotency key that was sent.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// The header the request id was sent in.
    pub fn request_id_header(&self) -> &HeaderName {
        static DEFAULT: HeaderName = X_REQUEST_ID;
        self.request_id_header.as_ref().unwrap_or(&DEFAULT)
    }

    /// The request id kneo reports for a response to this request: the
    /// server's echo in the header the id was sent in, when it is
    /// well-formed, else the id sent. Errors report it as
    /// [`Error::request_id`](crate::Error::request_id).
    pub fn reported_request_id(&self, response_headers: &HeaderMap) -> Option<String> {
        token(
            response_headers
                .get(self.request_id_header())
                .map(|v| v.as_bytes()),
        )
        .or_else(|| self.request_id.clone())
    }

    /// `true` when sending the request again cannot apply it twice: its
    /// method is idempotent or it carried an idempotency key.
    pub fn is_replay_safe(&self) -> bool {
        self.idempotency_key.is_some() || self.method.as_ref().is_some_and(is_idempotent)
    }

    /// Fills in what `self` does not know from `other` (a timeout raised deep
    /// in a stack knows nothing of the request).
    pub(crate) fn fill_from(&mut self, other: Sent) {
        if self.method.is_none() {
            self.method = other.method;
        }
        if self.request_id.is_none() {
            self.request_id = other.request_id;
            self.request_id_header = other.request_id_header;
        }
        if self.idempotency_key.is_none() {
            self.idempotency_key = other.idempotency_key;
        }
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
    (1..=TOKEN_CAP).contains(&value.len()) && all_visible_ascii(value)
}

/// Every byte in `!`..=`~`: branch-free so that it vectorizes (it runs on
/// every request id made or kept).
fn all_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(b'!') <= b'~' - b'!'))
}

/// `true` when `value` is kept as an idempotency key: 1 to 1,024 visible
/// ASCII characters.
fn is_valid_key(value: &[u8]) -> bool {
    (1..=KEY_CAP).contains(&value.len()) && all_visible_ascii(value)
}

/// A header value kept as an id or a code: valid tokens only, else `None`.
pub(crate) fn token(value: Option<&[u8]>) -> Option<String> {
    ascii(value.filter(|v| is_valid_request_id(v)))
}

fn key(value: Option<&[u8]>) -> Option<String> {
    ascii(value.filter(|v| is_valid_key(v)))
}

fn ascii(value: Option<&[u8]>) -> Option<String> {
    // Visible ASCII is valid UTF-8.
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}
