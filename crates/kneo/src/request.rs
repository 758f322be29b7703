//! Copies of a request, for sending it again: the retry policy's attempts
//! and the client's resend after a decode failure make them the same way.

use http::Request;

/// A copy of `req`'s head (method, URI, version, headers) with `body`. The
/// extensions are not copied: the caller decides whether the copy is the
/// same logical request (a retry keeps them) or a new one.
pub(crate) fn copy_head<B, B2>(req: &Request<B>, body: B2) -> Request<B2> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}
