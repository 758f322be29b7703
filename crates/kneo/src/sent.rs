//! What a request was sent with, captured once for every layer that reports
//! on it: the method, the request id and idempotency key the stamping layers
//! put into the request's extensions, and whether it was conditional.
//!
//! The request-id header is configured in one place, on
//! [`RequestIdLayer`](crate::request_id::RequestIdLayer); error mapping and
//! the retry policy learn it from the request. Without the stamping layers
//! they fall back to the `X-Request-ID` and `Idempotency-Key` headers.

use http::{HeaderName, HeaderValue, Method, Request};
use kneo_core::{is_conditional, Sent, IDEMPOTENCY_KEY, X_REQUEST_ID};
use tower_http::request_id::RequestId;

use crate::idempotency::IdempotencyKey;

/// The header the request id was stamped in, in the request's extensions,
/// when it is not `X-Request-ID` (the default costs nothing).
#[derive(Debug, Clone)]
pub(crate) struct RequestIdHeader(pub(crate) HeaderName);

/// What the request carried, captured cheaply (header values are reference
/// counted) and turned into a [`Sent`] only when an error is built.
#[derive(Debug, Clone)]
pub(crate) struct SentHeaders {
    method: Method,
    request_id_header: Option<HeaderName>,
    request_id: Option<HeaderValue>,
    idempotency_key: Option<HeaderValue>,
    conditional: bool,
}

impl SentHeaders {
    pub(crate) fn capture<B>(req: &Request<B>) -> Self {
        let ext = req.extensions();
        let request_id_header = ext.get::<RequestIdHeader>().map(|h| h.0.clone());
        let request_id = match ext.get::<RequestId>() {
            Some(id) => Some(id.header_value().clone()),
            None => req
                .headers()
                .get(request_id_header.as_ref().unwrap_or(&X_REQUEST_ID))
                .cloned(),
        };
        let idempotency_key = match ext.get::<IdempotencyKey>() {
            Some(key) => Some(key.header_value().clone()),
            None => req.headers().get(IDEMPOTENCY_KEY).cloned(),
        };
        SentHeaders {
            method: req.method().clone(),
            request_id_header,
            request_id,
            idempotency_key,
            conditional: is_conditional(req.headers()),
        }
    }

    /// `true` when the request carried an idempotency key.
    pub(crate) fn is_keyed(&self) -> bool {
        self.idempotency_key.is_some()
    }

    /// `true` when the request was conditional (`If-None-Match`, `If-Modified-Since`).
    pub(crate) fn is_conditional(&self) -> bool {
        self.conditional
    }

    /// The method sent.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    pub(crate) fn into_sent(self) -> Sent {
        let text = |v: &HeaderValue| v.to_str().ok().map(str::to_owned);
        let mut sent = Sent::new(self.method);
        if let Some(header) = self.request_id_header {
            sent = sent.with_request_id_header(header);
        }
        if let Some(id) = self.request_id.as_ref().and_then(text) {
            sent = sent.with_request_id(id);
        }
        if let Some(key) = self.idempotency_key.as_ref().and_then(text) {
            sent = sent.with_idempotency_key(key);
        }
        sent
    }
}
