//! [`Client`]: hyper-util's client under the kneo stack, with a base URL,
//! default headers and typed JSON calls.
//!
//! ```no_run
//! use kneo::{Client, ErrorKind};
//!
//! #[derive(serde::Deserialize)]
//! struct Run { id: u64 }
//!
//! # async fn demo() -> Result<(), kneo::Error> {
//! let client = Client::builder()
//!     .base_url("https://api.example.com/v1")
//!     .api_key("sk-live-...")
//!     .build()?;
//! match client.get_json::<Run>("/runs/7").await {
//!     Ok(run) => println!("run {}", run.id),
//!     Err(e) if e.kind() == ErrorKind::NotFound => println!("no such run"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::request::copy_head;
use crate::transport::{self, Alpn, Connector};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioExecutor;
use kneo_core::{Error, ErrorKind, Sent, IDEMPOTENCY_KEY};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::ServiceExt;
use tower_layer::Layer;

use crate::body::read_capped;
use crate::retry::ReplayBody;
use crate::url::{redacted, take_userinfo};
use crate::ClientLayer;

/// The response body type: hyper's, streaming.
pub use hyper::body::Incoming;

/// The transport under the stack.
type Transport = hyper_util::client::legacy::Client<Connector, ReplayBody<Full<Bytes>>>;
/// The whole stack over the transport.
type Stack = <ClientLayer as Layer<Transport>>::Service;

/// The default cap on a success body decoded by [`Client::get_json`] and friends: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// An HTTP API client: hyper-util's pooled client (HTTP/1 and HTTP/2) under
/// [`ClientLayer`]. Cheap to clone; clones share the connection pool and the
/// retry budget.
#[derive(Clone)]
pub struct Client {
    service: Stack,
    base_url: Option<Arc<str>>,
    default_headers: Arc<HeaderMap>,
    max_response_bytes: usize,
    /// The per-attempt timeout, which also bounds reading a success body.
    body_timeout: Option<Duration>,
    request_id_header: HeaderName,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    layer: ClientLayer,
    base_url: Option<String>,
    headers: HeaderMap,
    invalid: Option<String>,
    connect_timeout: Option<Duration>,
    max_response_bytes: usize,
}

/// Prints header names only where a value is sensitive: never the API key,
/// never a password or query value from the base URL.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url.as_deref().map(redacted))
            .field("default_headers", &self.default_headers)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("layer", &self.layer)
            .field("base_url", &self.base_url.as_deref().map(redacted))
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            layer: ClientLayer::new(),
            base_url: None,
            headers: HeaderMap::new(),
            invalid: None,
            connect_timeout: Some(Duration::from_secs(10)),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl ClientBuilder {
    /// Relative paths are resolved against `url` (`https://api.example.com/v1`).
    ///
    /// Credentials in the URL (`https://user:password@host`) are taken out
    /// of it and sent as `Authorization: Basic` on every request, as curl
    /// does, unless an [API key](Self::api_key) is set; they are never printed.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sends `Authorization: Bearer <key>` on every request. The value is
    /// marked sensitive: `Debug` never prints it.
    pub fn api_key(mut self, key: &str) -> Self {
        match HeaderValue::try_from(format!("Bearer {key}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.insert(AUTHORIZATION, value);
            }
            Err(_) => self.invalid = Some("the API key is not a valid header value".to_owned()),
        }
        self
    }

    /// Sends `name: value` on every request that does not set `name` itself.
    pub fn default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The kneo stack configuration (attempts, timeouts, budget...).
    pub fn layer(mut self, layer: ClientLayer) -> Self {
        self.layer = layer;
        self
    }

    /// The TCP connect timeout (default 10 s; `None` for the OS's).
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest success body the JSON helpers read (default 16 MiB).
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Builds the client. Fails with [`ErrorKind::Request`]
    /// on an invalid base URL or API key.
    pub fn build(mut self) -> Result<Client, Error> {
        if let Some(why) = self.invalid {
            return Err(Error::invalid_request(why));
        }
        let base_url = match self.base_url {
            Some(url) => {
                let mut uri: Uri = url.parse().map_err(Error::invalid_request)?;
                if uri.scheme().is_none() || uri.authority().is_none() {
                    return Err(Error::invalid_request(format!(
                        "base URL {:?} needs a scheme and a host",
                        redacted(&url)
                    )));
                }
                if let Some((stripped, basic)) = take_userinfo(&uri)? {
                    uri = stripped;
                    self.headers.entry(AUTHORIZATION).or_insert(basic);
                }
                Some(Arc::from(uri.to_string().trim_end_matches('/')))
            }
            None => None,
        };
        let body_timeout = self.layer.retry_layer().attempt_timeout_value();
        let request_id_header = self.layer.request_id_layer().header_name().clone();
        let connector = transport::connector(self.connect_timeout, Alpn::default())?;
        let transport =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            service: self.layer.layer(transport),
            base_url,
            default_headers: Arc::new(self.headers),
            max_response_bytes: self.max_response_bytes,
            body_timeout,
            request_id_header,
        })
    }
}

impl Client {
    /// A client with the default configuration and no base URL.
    pub fn new() -> Result<Client, Error> {
        ClientBuilder::default().build()
    }

    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// `path` resolved against the base URL (or taken as is when absolute).
    pub fn url(&self, path: &str) -> Result<Uri, Error> {
        let absolute = path.starts_with("http://") || path.starts_with("https://");
        let url = match (&self.base_url, absolute) {
            (_, true) => path.to_owned(),
            (Some(base), false) => format!("{base}/{}", path.trim_start_matches('/')),
            (None, false) => {
                return Err(Error::invalid_request(format!(
                    "{:?} is relative and the client has no base URL",
                    redacted(path)
                )))
            }
        };
        url.parse().map_err(Error::invalid_request)
    }

    /// Sends `req` through the stack: default headers added, a relative URI
    /// resolved against the base URL, credentials in an absolute URL sent as
    /// Basic auth (unless the request has an `Authorization`). Success
    /// responses come back with the body unread: read it with
    /// [`read_bytes`](Self::read_bytes) or [`read_json`](Self::read_json).
    /// Anything else is an [`Error`].
    pub async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Error> {
        if req.uri().scheme().is_none() {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            *req.uri_mut() = self.url(&path)?;
        } else if let Some((stripped, basic)) = take_userinfo(req.uri())? {
            *req.uri_mut() = stripped;
            req.headers_mut().entry(AUTHORIZATION).or_insert(basic);
        }
        for (name, value) in self.default_headers.iter() {
            if !req.headers().contains_key(name) {
                req.headers_mut().insert(name, value.clone());
            }
        }
        self.service.clone().oneshot(req).await
    }

    /// `GET path`, decoding a JSON response into `T`. A success whose body
    /// breaks off is fetched again (twice at most).
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let req = Request::get(self.url(path)?)
            .header(ACCEPT, "application/json")
            .body(Full::default())
            .map_err(Error::invalid_request)?;
        self.json(req).await
    }

    /// `POST path` with `body` as JSON, decoding a JSON response into `T`.
    ///
    /// A success whose body breaks off is sent again (twice at most) with the
    /// `Idempotency-Key` the stack stamped, so a server that honours keys
    /// answers it from the stored response without running it again; without
    /// a key (the idempotency-key layer off for POST) it is never re-sent,
    /// and the [`Network`](crate::ErrorKind::Network) error says it may have
    /// been applied.
    pub async fn post_json<B, T>(&self, path: &str, body: &B) -> Result<T, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let body = serde_json::to_vec(body).map_err(Error::invalid_request)?;
        let req = Request::post(self.url(path)?)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(Error::invalid_request)?;
        self.json(req).await
    }

    /// Sends `req` and reads its JSON. A success whose body breaks off (or
    /// times out) is sent again, up to [`BODY_RESENDS`] times, when that is
    /// safe: an idempotent method, or with the key it was stamped with, which
    /// a server honouring `Idempotency-Key` answers from the stored response
    /// without running the request again. Anything else is the caller's, as
    /// a typed error.
    async fn json<T: DeserializeOwned>(&self, mut req: Request<Full<Bytes>>) -> Result<T, Error> {
        let mut resends = 0;
        loop {
            let res = self.request(copy_head(&req, req.body().clone())).await?;
            let err = match self.read_json(res).await {
                Err(err) if err.kind() == ErrorKind::Network && resends < BODY_RESENDS => err,
                done => return done,
            };
            // The one replay-safety rule, on the identity the stack stamped.
            if !err.is_replay_safe() {
                return Err(err);
            }
            if let Some(key) = err.sent().idempotency_key_value() {
                req.headers_mut().insert(IDEMPOTENCY_KEY, key.clone());
            }
            tracing::debug!(error = %err, "the response body broke off; sending the request again");
            resends += 1;
        }
    }

    /// What a success response from [`request`](Self::request) was sent
    /// with: the identity the stack stamped (method, request id,
    /// idempotency key). Its
    /// [`reported_request_id`](Sent::reported_request_id) is the id kneo
    /// reports, as errors do: the server's echo, else the id sent.
    pub fn sent<B>(&self, res: &Response<B>) -> Sent {
        match res.extensions().get::<Sent>() {
            Some(sent) => sent.clone(),
            None => Sent::default().with_request_id_header(self.request_id_header.clone()),
        }
    }

    /// Reads the body of a success response from [`request`](Self::request),
    /// up to [`max_response_bytes`](ClientBuilder::max_response_bytes) and
    /// within the per-attempt timeout.
    ///
    /// A longer body is a [`Decode`](crate::ErrorKind::Decode) error; a body
    /// that breaks off or times out is a [`Network`](crate::ErrorKind::Network)
    /// error. Either carries the request id and key the request was sent with.
    pub async fn read_bytes(&self, res: Response<Incoming>) -> Result<Bytes, Error> {
        let status = res.status();
        let sent = self.sent(&res);
        let read = read_capped(res.into_body(), self.max_response_bytes);
        let read = match self.body_timeout {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(read) => read,
                Err(_) => return Err(Error::timeout(limit, sent)),
            },
            None => read.await,
        };
        match read {
            Ok((bytes, false)) => Ok(bytes),
            Ok((_, true)) => Err(Error::decode(
                format!(
                    "response body is larger than {} bytes",
                    self.max_response_bytes
                ),
                status,
                sent,
            )),
            Err(e) => Err(Error::network(e, sent)),
        }
    }

    /// Reads the body of a success response as [`read_bytes`](Self::read_bytes)
    /// does and decodes it as JSON into `T` (a [`Decode`](crate::ErrorKind::Decode)
    /// error when it does not decode).
    pub async fn read_json<T: DeserializeOwned>(
        &self,
        res: Response<Incoming>,
    ) -> Result<T, Error> {
        let status = res.status();
        let sent = self.sent(&res);
        let bytes = self.read_bytes(res).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::decode(e, status, sent))
    }
}

/// How many times [`Client::get_json`] and [`Client::post_json`] send a
/// request again whose success body broke off, when that is safe.
const BODY_RESENDS: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_api_key() {
        let builder = Client::builder()
            .base_url("http://127.0.0.1:1")
            .api_key("sk-live-secret");
        assert!(!format!("{builder:?}").contains("sk-live-secret"));
        let client = builder.build().expect("valid configuration");
        let debug = format!("{client:?}");
        assert!(!debug.contains("sk-live-secret"), "{debug}");
        assert!(
            debug.contains("authorization"),
            "the header is listed, its value hidden: {debug}"
        );
    }

    #[test]
    fn bad_configuration_is_a_request_error() {
        let err = Client::builder()
            .base_url("not a url")
            .build()
            .expect_err("invalid");
        assert_eq!(err.kind(), crate::ErrorKind::Request);
        let err = Client::builder()
            .api_key("line\nbreak")
            .build()
            .expect_err("invalid");
        assert_eq!(err.kind(), crate::ErrorKind::Request);
        let client = Client::new().expect("defaults are valid");
        assert_eq!(
            client.url("/x").expect_err("relative").kind(),
            crate::ErrorKind::Request
        );
    }
}
