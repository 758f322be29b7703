//! [`ProxyConfig`] (what the forwarding service does) and [`ServerConfig`]
//! (what the listener allows).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use kneo::ClientLayer;

use crate::path::PathError;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// Why an upstream URL or a setting was refused. The message never quotes
/// the URL: it may carry a password or a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub(crate) &'static str);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for ConfigError {}

/// The upstream every request is forwarded to: a scheme, an authority and
/// an optional path prefix.
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    /// The path prefix without its trailing `/` (empty for none).
    prefix: String,
}

impl Upstream {
    /// Parses `url`: `http://host[:port][/prefix]` (or `https://` with the
    /// `rustls` feature). Credentials, a query or a fragment are refused:
    /// the proxy forwards the caller's own query, and a sidecar's upstream
    /// URL is printed at startup.
    pub fn parse(url: &str) -> Result<Upstream, ConfigError> {
        if url.contains('#') {
            return Err(ConfigError("the upstream URL must not have a fragment"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| ConfigError("the upstream is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") if cfg!(feature = "rustls") => Scheme::HTTPS,
            Some("https") => {
                return Err(ConfigError(
                    "an https upstream needs kneo built with the `rustls` feature",
                ))
            }
            Some(_) => return Err(ConfigError("the upstream scheme must be http or https")),
            None => {
                return Err(ConfigError(
                    "the upstream URL must be absolute (http://host:port)",
                ))
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or(ConfigError("the upstream URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(ConfigError(
                "the upstream URL must not carry credentials (send them as headers)",
            ));
        }
        if authority.host().is_empty() {
            return Err(ConfigError("the upstream URL has no host"));
        }
        if uri.query().is_some() {
            return Err(ConfigError("the upstream URL must not have a query"));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ConfigError("the upstream host is not a valid Host header"))?;
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            scheme,
            authority,
            host,
            prefix,
        })
    }

    /// `http://host:port`, when this is a plain `http://` upstream spoken
    /// to over HTTP/1.1 (not `h2c`): what [the pool](crate::pool) connects to.
    pub(crate) fn plain_http1(&self, h2c: bool) -> Option<Uri> {
        if h2c || self.scheme != Scheme::HTTP {
            return None;
        }
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .ok()
    }

    /// The upstream's authority as a `Host` header value.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The host and port to connect to (the scheme's default port when none is given).
    pub fn host_port(&self) -> (&str, u16) {
        let default = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = self.authority.host();
        // `[::1]` as the URL writes it, `::1` as a socket address takes it.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        (host, self.authority.port_u16().unwrap_or(default))
    }

    /// The upstream URI for a caller's `path_and_query` (`/runs?x=1`): the
    /// path [cleaned](crate::path::clean) (dot-segments resolved, slashes
    /// merged; refused when it would leave the prefix), joined to the
    /// prefix, the query kept.
    ///
    /// ```
    /// use kneo_proxy::Upstream;
    ///
    /// let upstream = Upstream::parse("http://127.0.0.1:9000/api").unwrap();
    /// assert_eq!(upstream.uri_for("/runs/./7?x=1").unwrap(), "http://127.0.0.1:9000/api/runs/7?x=1");
    /// assert!(upstream.uri_for("/../admin").is_err());
    /// assert!(upstream.uri_for("admin").is_err());
    /// ```
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, PathError> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let path = crate::path::clean(path)?;
        let mut pq = String::with_capacity(
            self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.prefix);
        pq.push_str(&path);
        if let Some(query) = query {
            pq.push('?');
            pq.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| PathError::Invalid)
    }

    /// [`uri_for`](Self::uri_for) a caller's parsed target: with no prefix
    /// and a path already clean (the usual request), the URI reuses the
    /// caller's path and query as they are, without joining and parsing
    /// them again.
    pub(crate) fn uri_for_target(&self, target: &PathAndQuery) -> Result<Uri, PathError> {
        if self.prefix.is_empty() {
            if let Cow::Borrowed(_) = crate::path::clean(target.path())? {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(self.authority.clone());
                parts.path_and_query = Some(target.clone());
                return Uri::from_parts(parts).map_err(|_| PathError::Invalid);
            }
        }
        self.uri_for(target.as_str())
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// What the forwarding service does: where to, and the kneo stack in front
/// of the upstream, configured as for any client ([`ClientLayer`]).
///
/// ```
/// use std::time::Duration;
/// use kneo::ClientLayer;
/// use kneo_proxy::ProxyConfig;
///
/// let config = ProxyConfig::new("http://127.0.0.1:9000/api")?
///     .client(ClientLayer::new().max_attempts(5).attempt_timeout(Duration::from_secs(2)))
///     .budget_percent(Some(10.0))?;
/// assert_eq!(config.upstream().to_string(), "http://127.0.0.1:9000/api");
/// assert_eq!(config.client_layer().retry_layer().attempt_timeout_value(), Some(Duration::from_secs(2)));
/// assert!(ProxyConfig::new("http://user:secret@host").is_err());
/// # Ok::<(), kneo_proxy::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub(crate) upstream: Upstream,
    pub(crate) client: ClientLayer,
    pub(crate) budget_ratio: Option<f32>,
    pub(crate) connect_timeout: Duration,
    pub(crate) upstream_h2c: bool,
}

impl ProxyConfig {
    /// Forwarding to `upstream` (see [`Upstream::parse`]) through
    /// `ClientLayer::new().attempt_timeout(30 s)`: 3 attempts, no deadline,
    /// `Retry-After` up to 60 s, idempotency keys on POST and PATCH, 64 KiB
    /// bodies replayable; and a retry budget of 20 % of traffic (with a
    /// floor of 10 retries a second).
    pub fn new(upstream: &str) -> Result<ProxyConfig, ConfigError> {
        Ok(ProxyConfig {
            upstream: Upstream::parse(upstream)?,
            client: ClientLayer::new().attempt_timeout(Duration::from_secs(30)),
            budget_ratio: Some(0.2),
            connect_timeout: Duration::from_secs(10),
            upstream_h2c: false,
        })
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The kneo stack in front of the upstream: its request ids,
    /// idempotency keys, throttle and retries, each configured as for any
    /// client. The proxy sets two things of its own on it: error mapping
    /// hands every upstream answer on ([`MapErrorLayer::map_responses`]
    /// `(false)`), and [`budget_percent`](Self::budget_percent), when set,
    /// is the retry layer's budget. The retry layer's per-attempt timeout
    /// also bounds an upgrade handshake's answer.
    ///
    /// [`MapErrorLayer::map_responses`]: kneo::map_error::MapErrorLayer::map_responses
    pub fn client(mut self, layer: ClientLayer) -> Self {
        self.client = layer;
        self
    }

    /// The kneo stack as configured.
    pub fn client_layer(&self) -> &ClientLayer {
        &self.client
    }

    /// Retries allowed as a percentage of requests over 10 s, beside a floor
    /// of 10 retries a second (kneo's `RatioBudget`, exact for fractional
    /// ratios), counted in the proxy's metrics; it replaces any budget on
    /// the [client](Self::client)'s retry layer. `None` leaves that layer's
    /// own. Refused outside 0 to 1000.
    pub fn budget_percent(mut self, percent: Option<f32>) -> Result<Self, ConfigError> {
        if let Some(p) = percent {
            if !(0.0..=1000.0).contains(&p) {
                return Err(ConfigError("the budget percentage must be from 0 to 1000"));
            }
        }
        self.budget_ratio = percent.map(|p| p / 100.0);
        Ok(self)
    }

    /// The TCP connect timeout (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The connector under every upstream connection: kneo's, with this
    /// config's connect timeout, offering `alpn` to TLS upstreams.
    pub(crate) fn connector(
        &self,
        alpn: kneo::transport::Alpn,
    ) -> Result<kneo::transport::Connector, ConfigError> {
        kneo::transport::connector(Some(self.connect_timeout), alpn)
            .map_err(|_| ConfigError("the platform's root certificates could not be loaded"))
    }

    /// Speak HTTP/2 to a plain `http://` upstream, with prior knowledge
    /// (h2c): every request is multiplexed over one pooled connection
    /// (default `false`: HTTP/1.1, a connection per request in flight).
    /// An `https://` upstream needs no setting: HTTP/2 is offered by ALPN
    /// and used when the upstream picks it. Refused for `https://`.
    ///
    /// Upgrades (WebSocket) still go upstream over HTTP/1.1, on connections
    /// of their own.
    pub fn upstream_h2c(mut self, h2c: bool) -> Result<Self, ConfigError> {
        if h2c && self.upstream.scheme == Scheme::HTTPS {
            return Err(ConfigError(
                "h2c is for http:// upstreams; an https:// upstream is offered HTTP/2 by ALPN",
            ));
        }
        self.upstream_h2c = h2c;
        Ok(self)
    }
}

/// What the listener allows a caller.
///
/// ```
/// use std::time::Duration;
/// use kneo_proxy::ServerConfig;
///
/// let config = ServerConfig::new().max_connections(64).drain_timeout(Duration::from_secs(5));
/// assert_eq!(config.max_connections_value(), 64);
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// 1,024 connections, 10 s to send a request head, 64 KiB of request
    /// head, 30 s to drain on shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections served at once (0 is taken as 1). One more is answered
    /// `503` with a problem body; beyond twice the limit a connection is
    /// closed unanswered.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// The configured connection limit.
    pub fn max_connections_value(&self) -> usize {
        self.max_connections
    }

    /// How long a caller has to send a whole request head; a slower one is
    /// disconnected.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The largest request head (request line and headers); a larger one is
    /// answered `431`.
    pub fn max_header_bytes(mut self, max: usize) -> Self {
        self.max_header_bytes = max;
        self
    }

    /// How long in-flight requests may run on after shutdown begins.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller's parsed target gives the URI its text would, with a
    /// prefix or without, clean or not, and the same refusals.
    #[test]
    fn a_parsed_target_is_joined_as_its_text_is() {
        for upstream in ["http://up:9", "http://up:9/api"] {
            let up = Upstream::parse(upstream).expect("valid");
            for target in [
                "/",
                "/runs/7",
                "/runs/7?x=1&y=2",
                "/a//b",
                "/a/./b/../c?q",
                "/%2e%2e/admin",
                "/../admin",
                "/a%2Fb",
                "*",
            ] {
                let parsed: PathAndQuery = target.parse().expect("a target");
                let text = up.uri_for(target).map(|uri| uri.to_string());
                let fast = up.uri_for_target(&parsed).map(|uri| uri.to_string());
                assert_eq!(fast, text, "{upstream} {target}");
            }
        }
    }

    #[test]
    fn upstream_urls() {
        let up = Upstream::parse("http://127.0.0.1:9000/api/v1/").expect("valid");
        assert_eq!(
            up.uri_for("/runs/7?x=1&y=2").expect("valid").to_string(),
            "http://127.0.0.1:9000/api/v1/runs/7?x=1&y=2"
        );
        assert_eq!(up.host(), "127.0.0.1:9000");
        let bare = Upstream::parse("http://up").expect("valid");
        assert_eq!(bare.uri_for("/").expect("valid").to_string(), "http://up/");
        assert_eq!(bare.host_port(), ("up", 80));
        assert_eq!(
            Upstream::parse("http://[::1]:8/")
                .expect("valid")
                .host_port(),
            ("::1", 8)
        );
        for bad in [
            "not a url",
            "/relative",
            "ftp://host/",
            "http://user:secret@host/",
            "http://host/?key=secret",
            "http://host/#frag",
        ] {
            let err = Upstream::parse(bad).expect_err(bad);
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn budget_percent_is_bounded() {
        let config = ProxyConfig::new("http://up").expect("valid");
        assert!(config.clone().budget_percent(Some(-1.0)).is_err());
        assert!(config.clone().budget_percent(Some(1000.5)).is_err());
        assert!(config.clone().budget_percent(Some(f32::NAN)).is_err());
        let c = config.budget_percent(Some(20.0)).expect("valid");
        assert_eq!(c.budget_ratio, Some(0.2));
    }
}
