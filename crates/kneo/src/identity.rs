//! A request's identity, stamped once: the id and key layers record
//! [`Sent`] in the request's extensions after setting their header, and put
//! it on the response; every later layer reads it with [`Sent::of`].

use http::{HeaderName, Request};
use kneo_core::{Sent, X_REQUEST_ID};

/// Records `req`'s identity, read from its headers now that a stamping layer
/// has set them, in its extensions (replacing an earlier one in place), and
/// returns it. The request id is read from `request_id_header`, else from
/// the header an earlier stamp named, else from `X-Request-ID`.
pub(crate) fn stamp<B>(req: &mut Request<B>, request_id_header: Option<&HeaderName>) -> Sent {
    let header = match request_id_header {
        Some(header) => header.clone(),
        None => req
            .extensions()
            .get::<Sent>()
            .map_or(X_REQUEST_ID, |earlier| earlier.request_id_header().clone()),
    };
    let sent = Sent::from_headers(req.method(), req.headers(), &header);
    match req.extensions_mut().get_mut::<Sent>() {
        Some(slot) => *slot = sent.clone(),
        None => {
            req.extensions_mut().insert(sent.clone());
        }
    }
    sent
}
