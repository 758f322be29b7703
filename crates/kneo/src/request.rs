//! Copies of a request, for sending it again: the retry layer's attempts
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

/// A copy of `req` to send again as the same logical request: its head, a
/// clone of its body (a [`ReplayBody`](crate::retry::ReplayBody) clone
/// replays what was sent) and its extensions (identity, deadline).
pub(crate) fn copy_attempt<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut copy = copy_head(req, req.body().clone());
    *copy.extensions_mut() = req.extensions().clone();
    copy
}
