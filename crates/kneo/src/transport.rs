//! The one constructor for errors that are not responses: whatever a
//! transport or a layer below fails with becomes a [`kneo::Error`](Error).

use kneo_core::{BoxError, Error, Sent};

/// Classifies a transport error: a `kneo::Error` passes through (completed
/// with what was sent); anything else becomes a network error, marked as a
/// connect failure when hyper-util says so (DNS, TCP connect and TLS all fail
/// inside its connector).
pub(crate) fn transport_error(err: BoxError, sent: impl FnOnce() -> Sent) -> Error {
    let err = match err.downcast::<Error>() {
        Ok(mut e) => {
            kneo_core::__private::fill_sent(&mut e, sent());
            return *e;
        }
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
