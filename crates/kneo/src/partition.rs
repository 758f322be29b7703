//! What the layers that keep state per upstream partition by: the
//! request's authority (`host:port`), so that one upstream's trouble (a spent
//! rate limit, a drained retry quota) never holds up another's. The throttle
//! adds the caller's credential within it.

use http::uri::Authority;
use http::Request;

/// The authority `req` goes to; `None` for a request without one (a
/// relative URI), which all share one partition.
pub(crate) fn authority<B>(req: &Request<B>) -> Option<&Authority> {
    req.uri().authority()
}
