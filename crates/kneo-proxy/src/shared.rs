//! What every clone of a [`Proxy`](crate::Proxy) shares, and the rules of
//! its answers that every path follows (the stack's, a front's, an
//! upgrade's): one request id settled on arrival, the target joined to the
//! upstream, every answer recorded once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, HOST};
use http::{Method, Request, Response, Uri, Version};
use kneo::core::{is_valid_request_id, X_REQUEST_ID};
use kneo::request_id::{RequestId, RequestIdLayer};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::Upstream;
use crate::headers::{rewrite, Hop};
use crate::metrics::Metrics;
use crate::outcome::{Exchange, ExchangeHook};
use crate::problem::ProblemAnswer;

/// The caller's address, in request extensions; [`serve`](crate::serve)
/// puts it there for a front layer (and [`Proxy`](crate::Proxy) reads it
/// there), and `X-Forwarded-For` gets it appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl ClientAddr {
    /// The caller's IP address in `extensions`, when one is there.
    pub(crate) fn ip(extensions: &http::Extensions) -> Option<IpAddr> {
        extensions.get::<ClientAddr>().map(|a| a.0.ip())
    }
}

/// Readiness, as `/readyz` reports it: the upstream has accepted a
/// connection, and the proxy is not draining.
#[derive(Debug, Default)]
pub struct Health {
    upstream_seen: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// `true` once the upstream has accepted a connection and until draining begins.
    pub fn is_ready(&self) -> bool {
        self.upstream_seen() && !self.is_draining()
    }

    /// `true` once the upstream has accepted a connection.
    pub fn upstream_seen(&self) -> bool {
        self.upstream_seen.load(Ordering::Relaxed)
    }

    /// `true` once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the start of shutdown: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn mark_upstream_seen(&self) {
        // A load first: the flag is set once and read on every response.
        if !self.upstream_seen() {
            self.upstream_seen.store(true, Ordering::Relaxed);
        }
    }
}

/// What every clone of a proxy shares.
pub(crate) struct Shared {
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Metrics,
    pub(crate) health: Arc<Health>,
    pub(crate) on_exchange: Option<ExchangeHook>,
    /// The stack every pool of this proxy is wrapped in (one retry budget).
    pub(crate) client: kneo::ClientLayer,
}

impl Shared {
    /// The upstream URI for a request with these `parts`, or the problem
    /// that refuses it: origin-form (`/path`) or absolute-form
    /// (`http://host/path`) targets only, the path [cleaned](crate::path)
    /// into the upstream's prefix; `CONNECT` is the proxy's to answer, not
    /// the upstream's.
    pub(crate) fn target(&self, parts: &http::request::Parts) -> Result<Uri, Box<ProblemAnswer>> {
        let uri = match parts.uri.path_and_query() {
            Some(target) => self.upstream.uri_for_target(target),
            None if parts.uri.scheme().is_some() => self.upstream.uri_for("/"),
            None => self.upstream.uri_for(""),
        };
        let mut refused = match uri {
            Ok(uri) if parts.method != Method::CONNECT => return Ok(uri),
            _ if parts.method == Method::CONNECT => ProblemAnswer::method_not_allowed(),
            Err(e) => ProblemAnswer::bad_target(e),
            Ok(_) => ProblemAnswer::bad_request(None),
        };
        refused.request_id = settled_id(&parts.headers);
        Err(Box::new(refused))
    }

    /// Makes a caller's request head the upstream's: the [target](Self::target)
    /// joined to the upstream, the caller's host taken from the URI when it
    /// came there (HTTP/2 carries it in `:authority`, not `Host`), the
    /// headers [rewritten](crate::headers::rewrite), HTTP/1.1 semantics.
    /// The problem that refuses it, when it is refused.
    pub(crate) fn retarget(
        &self,
        parts: &mut http::request::Parts,
        peer: Option<IpAddr>,
    ) -> Result<(), Box<ProblemAnswer>> {
        let uri = self.target(parts)?;
        if !parts.headers.contains_key(HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, host);
            }
        }
        rewrite(
            &mut parts.headers,
            &Hop::Request {
                version: parts.version,
                peer,
                upstream_host: self.upstream.host().clone(),
            },
        );
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        Ok(())
    }
}

/// Marks a response that left a [`ResponseFuture`](crate::ResponseFuture), which recorded it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded;

/// Records a problem answer and makes it a response.
pub(crate) fn finish_problem(
    shared: &Shared,
    answer: ProblemAnswer,
    method: &Method,
    uri: &Uri,
    start: Instant,
) -> Response<ProxyBody> {
    record(
        shared,
        &Exchange {
            request_id: answer.request_id.as_deref(),
            upstream_request_id: None,
            method,
            path: uri.path(),
            status: answer.status,
            attempts: answer.attempts,
            upstream_time: start.elapsed(),
            outcome: answer.outcome,
        },
    );
    answer.into_response().map(ProxyBody::full)
}

impl Shared {
    /// Has the exchange log write out what this thread buffered.
    pub(crate) fn flush_log(&self) {
        if let Some(hook) = &self.on_exchange {
            hook.flush();
        }
    }
}

/// Counts `exchange` in the metrics and hands it to the hook: once per
/// answered request.
pub(crate) fn record(shared: &Shared, exchange: &Exchange<'_>) {
    shared.metrics.record(
        exchange.outcome,
        exchange.status,
        exchange.attempts,
        exchange.upstream_time,
    );
    if let Some(hook) = &shared.on_exchange {
        hook.record(exchange);
    }
}

/// The upstream's own request id in an answer's `headers`: their
/// `X-Request-ID` when it is valid and not `sent`.
pub(crate) fn upstream_request_id<'h>(
    headers: &'h HeaderMap,
    sent: Option<&HeaderValue>,
) -> Option<&'h str> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| Some(*v) != sent && is_valid_request_id(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
}

/// The request id a [settled](settle_request_id) request carries, for the
/// proxy's own answers (a valid one only: the caller's may not have been).
pub(crate) fn settled_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Settles `req`'s id before anything else sees it, as kneo's
/// `RequestIdLayer` does ([`RequestIdLayer::settle`]): a valid
/// `X-Request-ID` of the caller's is kept, else one is made and set. The
/// layer in front, the kneo stack (which keeps a valid id) and the upstream
/// then all see this one id.
pub(crate) fn settle_request_id<B>(req: &mut Request<B>) -> Option<HeaderValue> {
    RequestIdLayer::new()
        .settle(req)
        .map(RequestId::into_header_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ids(ids: &[&'static [u8]]) -> Request<()> {
        let mut req = Request::new(());
        for id in ids {
            let value = HeaderValue::from_bytes(id).expect("a header value");
            req.headers_mut().append(X_REQUEST_ID, value);
        }
        req
    }

    #[test]
    fn the_callers_valid_id_is_kept_else_one_is_made() {
        let mut kept = with_ids(&[b"order-7", b"order-8"]);
        assert_eq!(
            settle_request_id(&mut kept).expect("an id"),
            "order-7",
            "the first valid one"
        );
        let all: Vec<_> = kept.headers().get_all(X_REQUEST_ID).iter().collect();
        assert_eq!(all, ["order-7"], "one header, no duplicates");

        for ids in [&[][..], &[&b"has spaces"[..]], &[&b"caf\xc3\xa9"[..]]] {
            let mut req = with_ids(ids);
            let made = settle_request_id(&mut req).expect("an id is made");
            assert_eq!(made.len(), 36, "a UUID: {made:?}");
            assert_eq!(req.headers()[X_REQUEST_ID], made);
            assert_ne!(
                settle_request_id(&mut with_ids(ids)),
                Some(made),
                "each one new"
            );
        }
    }
}
