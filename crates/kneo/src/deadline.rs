//! The overall deadline of one logical request, carried in its extensions so
//! every layer that waits (the throttle, the retry policy, the per-attempt
//! timeout) measures against the same instant.

use std::time::Duration;

use http::Request;
use tokio::time::Instant;

/// When the whole logical request must be done by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub(crate) Instant);

impl Deadline {
    /// The request's deadline, when a layer above set one.
    pub(crate) fn of<B>(req: &Request<B>) -> Option<Instant> {
        req.extensions().get::<Deadline>().map(|d| d.0)
    }

    /// Whether waiting `wait` from now would reach `req`'s deadline (never,
    /// without one): the one check behind the throttle's and the retry
    /// policy's refusals to wait.
    pub(crate) fn would_pass<B>(req: &Request<B>, wait: Duration) -> bool {
        Deadline::of(req).is_some_and(|at| Instant::now() + wait >= at)
    }

    /// Sets the deadline `after` from now, unless one is set already (the
    /// first layer to see the request starts the clock).
    pub(crate) fn start<B>(req: &mut Request<B>, after: Duration) {
        if Deadline::of(req).is_none() {
            req.extensions_mut()
                .insert(Deadline(Instant::now() + after));
        }
    }
}
