//! Tracing spans named as OpenTelemetry's HTTP client semantic conventions
//! name their attributes, so `tracing-opentelemetry` exports them as they
//! are: one span per logical request (`kneo.request`) and one per attempt
//! (`kneo.attempt`) inside it.
//!
//! Fields: `http.request.method`, `server.address`, `server.port`, `url.full`
//! (query values redacted), `http.response.status_code`,
//! `http.request.resend_count` (0 on the first attempt), `error.type` (the
//! [`ErrorKind`](crate::ErrorKind) string), `kneo.request_id` and
//! `kneo.attempt`. Never a header value but the request id: no
//! `Authorization`, no key. With no subscriber listening, making a span costs
//! one check of the callsite's interest and formats nothing.

use http::{Request, Response};
use kneo_core::{Error, Sent};
use tracing::field::Empty;
use tracing::Span;

use crate::url::redacted;

/// The attempt number of a request, in its extensions from the second
/// attempt on (set by the retry policy; absent means the first).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptNumber(pub(crate) u32);

fn request_id<B>(req: &Request<B>) -> &str {
    req.extensions()
        .get::<Sent>()
        .and_then(Sent::request_id)
        .unwrap_or("")
}

/// The span of one logical request, all its attempts and waits.
pub(crate) fn request_span<B>(req: &Request<B>) -> Span {
    tracing::info_span!(
        target: "kneo",
        "kneo.request",
        http.request.method = %req.method(),
        server.address = req.uri().host().unwrap_or(""),
        server.port = req.uri().port_u16(),
        url.full = %redacted(&req.uri().to_string()),
        kneo.request_id = request_id(req),
        http.response.status_code = Empty,
        error.type = Empty,
        kneo.attempts = Empty,
    )
}

/// The span of one attempt (one request on the wire).
pub(crate) fn attempt_span<B>(req: &Request<B>) -> Span {
    let attempt = req.extensions().get::<AttemptNumber>().map_or(1, |n| n.0);
    tracing::info_span!(
        target: "kneo",
        "kneo.attempt",
        http.request.method = %req.method(),
        server.address = req.uri().host().unwrap_or(""),
        server.port = req.uri().port_u16(),
        url.full = %redacted(&req.uri().to_string()),
        kneo.request_id = request_id(req),
        kneo.attempt = attempt,
        http.request.resend_count = attempt - 1,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Records how a request or attempt ended.
pub(crate) fn record<B>(span: &Span, result: &Result<Response<B>, Error>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(res) => {
            span.record("http.response.status_code", res.status().as_u16());
        }
        Err(e) => {
            if let Some(status) = e.status() {
                span.record("http.response.status_code", status.as_u16());
            }
            span.record("error.type", e.kind().as_str());
        }
    }
}
