//! A request's identity ([`Sent`]): its method, request id, idempotency key
//! and whether it was conditional; and the rules for telling a well-formed
//! id or key.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;

use crate::header::{IDEMPOTENCY_KEY, X_REQUEST_ID};
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};

/// The longest server code or request id kept.
pub(crate) const TOKEN_CAP: usize = 128;
/// The longest idempotency key kept (Stripe allows 255; some allow more).
pub(crate) const KEY_CAP: usize = 1024;

/// A request's identity: its method, request id (and the header it went
/// in), idempotency key, and whether it was conditional. Worked out once, by
/// the layers that stamp the id and the key, and kept in the request's
/// extensions (then the response's, and every [`Error`](crate::Error) for
/// the request): every later layer reads this one value instead of parsing
/// the headers again.
///
/// The id and key are kept as the header values they were sent as (cloning
/// one bumps a reference count), and only when well-formed.
///
/// ```
/// use http::{HeaderMap, HeaderName, Method, Request};
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
///
/// // A request's identity: the stamped value, else read from its headers.
/// let req = Request::get("/").header("if-none-match", "\"v1\"").body(()).unwrap();
/// assert!(Sent::of(&req).is_conditional());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    method: Option<Method>,
    request_id: Option<HeaderValue>,
    idempotency_key: Option<HeaderValue>,
    /// Where the server echoes the request id; `None` for `X-Request-ID`.
    request_id_header: Option<HeaderName>,
    conditional: bool,
}

impl Sent {
    /// A request sent with `method`, carrying no id and no key.
    pub fn new(method: Method) -> Self {
        Sent {
            method: Some(method),
            ..Sent::default()
        }
    }

    /// `req`'s identity: the one the stamping layers put in its extensions,
    /// else read from its headers (`X-Request-ID`, `Idempotency-Key`, the
    /// conditional headers) for a stack without them. Allocates nothing.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        match req.extensions().get::<Sent>() {
            Some(sent) => sent.clone(),
            None => Sent::from_headers(req.method(), req.headers(), &X_REQUEST_ID),
        }
    }

    /// Reads the request id (from `request_id_header`), the `Idempotency-Key`
    /// and whether the request is conditional from request headers, keeping
    /// only well-formed values. A server's echo of the id is then looked for
    /// in `request_id_header` too.
    pub fn from_headers(
        method: &Method,
        headers: &HeaderMap,
        request_id_header: &HeaderName,
    ) -> Self {
        Sent {
            method: Some(method.clone()),
            request_id: headers
                .get(request_id_header)
                .filter(|v| is_valid_request_id(v.as_bytes()))
                .cloned(),
            idempotency_key: headers
                .get(IDEMPOTENCY_KEY)
                .filter(|v| is_valid_key(v.as_bytes()))
                .cloned(),
            request_id_header: (request_id_header != X_REQUEST_ID)
                .then(|| request_id_header.clone()),
            conditional: is_conditional(headers),
        }
    }

    /// Sets the request id that was sent (ignored unless [well-formed](is_valid_request_id)).
    pub fn with_request_id(mut self, id: impl AsRef<str>) -> Self {
        self.request_id = visible(id.as_ref(), is_valid_request_id);
        self
    }

    /// Sets the idempotency key that was sent (ignored unless 1 to 1,024
    /// visible ASCII characters).
    pub fn with_idempotency_key(mut self, key: impl AsRef<str>) -> Self {
        self.idempotency_key = visible(key.as_ref(), is_valid_key);
        self
    }

    /// Sets the header the request id was sent in (default `X-Request-ID`),
    /// where a server's echo of it is looked for.
    pub fn with_request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id_header = (header != X_REQUEST_ID).then_some(header);
        self
    }

    /// Sets whether the request was conditional (`If-None-Match`,
    /// `If-Modified-Since`): a `304` answers it successfully.
    pub fn with_conditional(mut self, conditional: bool) -> Self {
        self.conditional = conditional;
        self
    }

    /// Sets the request id as the header value it is sent as, and the
    /// header it goes in: what a layer that stamps the id records (an id
    /// that is not [well-formed](is_valid_request_id) is not kept).
    pub fn set_request_id(&mut self, header: &HeaderName, id: Option<HeaderValue>) {
        self.request_id = id.filter(|v| is_valid_request_id(v.as_bytes()));
        self.request_id_header = (header != X_REQUEST_ID).then(|| header.clone());
    }

    /// Sets the idempotency key as the header value it is sent as: what a
    /// layer that stamps the key records (a key that is not 1 to 1,024
    /// visible ASCII characters is not kept).
    pub fn set_idempotency_key(&mut self, key: Option<HeaderValue>) {
        self.idempotency_key = key.filter(|v| is_valid_key(v.as_bytes()));
    }

    /// The request method (`None` for [`Sent::default`]: not known).
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// The request id that was sent.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The idempotency key that was sent.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The idempotency key as the header value it was sent as.
    pub fn idempotency_key_value(&self) -> Option<&HeaderValue> {
        self.idempotency_key.as_ref()
    }

    /// The request id as the header value it was sent as.
    pub fn request_id_value(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// The header the request id was sent in.
    pub fn request_id_header(&self) -> &HeaderName {
        static DEFAULT: HeaderName = X_REQUEST_ID;
        self.request_id_header.as_ref().unwrap_or(&DEFAULT)
    }

    /// `true` when the request was conditional: a `304` is then its success.
    pub fn is_conditional(&self) -> bool {
        self.conditional
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
        .or_else(|| self.request_id().map(str::to_owned))
    }

    /// `true` when sending the request again cannot apply it twice: its
    /// method is idempotent or it carried an idempotency key.
    pub fn is_replay_safe(&self) -> bool {
        self.idempotency_key.is_some() || self.method.as_ref().is_some_and(is_idempotent)
    }
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

/// `text` as a header value when `valid` says it is well-formed.
fn visible(text: &str, valid: fn(&[u8]) -> bool) -> Option<HeaderValue> {
    valid(text.as_bytes())
        .then(|| HeaderValue::from_str(text).ok())
        .flatten()
}

/// A header value kept as an id or a code: valid tokens only, else `None`.
pub(crate) fn token(value: Option<&[u8]>) -> Option<String> {
    ascii(value.filter(|v| is_valid_request_id(v)))
}

fn ascii(value: Option<&[u8]>) -> Option<String> {
    // Visible ASCII is valid UTF-8.
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}
