//! A request's identity, stamped once: the id and key layers record
//! [`Sent`] in the request's extensions as they set their header (the first
//! to run reads the rest from the headers, the second updates it in place)
//! and put it on the response; every later layer reads it with [`Sent::of`].

use http::{HeaderName, HeaderValue, Request};
use kneo_core::{is_conditional, Sent, IDEMPOTENCY_KEY, X_REQUEST_ID};

/// Records that `req` is sent with request id `id` in `header`; returns the
/// identity now recorded.
pub(crate) fn stamp_request_id<B>(
    req: &mut Request<B>,
    header: &HeaderName,
    id: Option<HeaderValue>,
) -> Sent {
    if let Some(sent) = req.extensions_mut().get_mut::<Sent>() {
        sent.set_request_id(header, id);
        return sent.clone();
    }
    let key = req.headers().get(IDEMPOTENCY_KEY).cloned();
    record(req, |sent| {
        sent.set_request_id(header, id);
        sent.set_idempotency_key(key);
    })
}

/// Records that `req` is sent with idempotency key `key`; returns the
/// identity now recorded.
pub(crate) fn stamp_idempotency_key<B>(req: &mut Request<B>, key: Option<HeaderValue>) -> Sent {
    if let Some(sent) = req.extensions_mut().get_mut::<Sent>() {
        sent.set_idempotency_key(key);
        return sent.clone();
    }
    let id = req.headers().get(X_REQUEST_ID).cloned();
    record(req, |sent| {
        sent.set_request_id(&X_REQUEST_ID, id);
        sent.set_idempotency_key(key);
    })
}

/// The first stamp: the method and whether the request is conditional, with
/// what `fill` sets, put into the extensions.
fn record<B>(req: &mut Request<B>, fill: impl FnOnce(&mut Sent)) -> Sent {
    let mut sent = Sent::new(req.method().clone()).with_conditional(is_conditional(req.headers()));
    fill(&mut sent);
    req.extensions_mut().insert(sent.clone());
    sent
}
