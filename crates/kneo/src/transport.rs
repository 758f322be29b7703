//! What sits under the stack: the [`connector`] kneo's [`Client`](crate::Client)
//! (and `kneo proxy`) connect with, and the one constructor for errors that
//! are not responses: whatever a transport or a layer below fails with
//! becomes a [`kneo::Error`](Error).

use kneo_core::{BoxError, Error, Sent};

/// The connector [`connector`] makes: hyper-util's TCP connector, under
/// rustls with the `rustls` feature.
#[cfg(all(feature = "client", not(feature = "rustls")))]
pub type Connector = hyper_util::client::legacy::connect::HttpConnector;
/// The connector [`connector`] makes: hyper-util's TCP connector, under
/// rustls with the `rustls` feature.
#[cfg(feature = "rustls")]
pub type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The protocols a TLS server is offered by ALPN.
#[cfg(feature = "client")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Alpn {
    /// `h2` and `http/1.1`: the pool multiplexes when the server picks `h2`.
    #[default]
    H2AndHttp1,
    /// `http/1.1` only: for connections that will be upgraded (WebSocket),
    /// which needs HTTP/1.1.
    Http1,
}

/// The connector under kneo's client: TCP with `connect_timeout` and
/// `TCP_NODELAY`, and, with the `rustls` feature, TLS for `https://` with the
/// platform's root certificates, offering `alpn`. Plain `http://` always
/// works; without the feature `https://` is refused by hyper-util.
///
/// An error when the platform's root certificates cannot be loaded.
///
/// ```
/// use std::time::Duration;
/// use kneo::transport::{connector, Alpn};
///
/// let connector = connector(Some(Duration::from_secs(5)), Alpn::default()).unwrap();
/// let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
///     hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
///         .build(connector);
/// # drop(client);
/// ```
#[cfg(feature = "client")]
pub fn connector(
    connect_timeout: Option<std::time::Duration>,
    alpn: Alpn,
) -> Result<Connector, Error> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(connect_timeout);
    http.set_nodelay(true);
    #[cfg(feature = "rustls")]
    {
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(Error::invalid_request)?
            .https_or_http();
        Ok(match alpn {
            Alpn::H2AndHttp1 => builder.enable_http1().enable_http2().wrap_connector(http),
            Alpn::Http1 => builder.enable_http1().wrap_connector(http),
        })
    }
    #[cfg(not(feature = "rustls"))]
    {
        let _ = alpn;
        Ok(http)
    }
}

/// Classifies a transport error: a `kneo::Error` passes through as it was
/// built; anything else becomes a network error, marked as a
/// connect failure when hyper-util says so (DNS, TCP connect and TLS all fail
/// inside its connector).
pub(crate) fn transport_error(err: BoxError, sent: impl FnOnce() -> Sent) -> Error {
    let err = match err.downcast::<Error>() {
        Ok(e) => return *e,
        Err(other) => other,
    };
    // tower's `Timeout` below this layer: keep it, under an I/O timeout so
    // `is_timeout()` sees it.
    let err: BoxError = if err.is::<tower::timeout::error::Elapsed>() {
        Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, err))
    } else {
        err
    };
    let connect = is_connect(&*err);
    let mapped = Error::network(err, sent());
    if connect {
        mapped.connect()
    } else {
        mapped
    }
}

#[cfg(feature = "client")]
fn is_connect(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| (*e).source()).any(|e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
    })
}

#[cfg(not(feature = "client"))]
fn is_connect(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}
