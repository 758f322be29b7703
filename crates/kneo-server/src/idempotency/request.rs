//! What a request is to the idempotency layers: passed through, refused at
//! once, or keyed; and, once its body is read, the fingerprint and record
//! key it is filed under. Shared by [`Idempotency`](super::Idempotency) and
//! the transactional layer.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body::Body;
use kneo_core::BoxError;

use super::answer::{problems, request_id};
use super::body::read_request;
use super::config::Config;
use crate::record::key::{self, RecordKey};
use crate::record::Fingerprint;
use kneo_core::problem::ProblemResponse;

/// What the layer does with a request, decided from its head.
pub(crate) enum Route {
    /// Not the layer's business: another method, or no key when none is required.
    Pass,
    /// Refused at once (a missing or malformed key), with the request's id.
    Refuse(ProblemResponse, Option<HeaderValue>),
    /// Keyed with this key.
    Keyed(Arc<str>),
}

/// Routes a request by its method and headers.
pub(crate) fn route(config: &Config, method: &Method, headers: &HeaderMap) -> Route {
    if !config.methods.contains(method) {
        return Route::Pass;
    }
    match key::parse(headers) {
        Ok(Some(key)) => Route::Keyed(key),
        Ok(None) if !config.require => Route::Pass,
        Ok(None) => Route::Refuse(problems::missing(), request_id(headers)),
        Err(e) => Route::Refuse(problems::invalid(e), request_id(headers)),
    }
}

/// The fingerprint and record key of a keyed request whose body is `body`.
pub(crate) fn identify(
    config: &Config,
    parts: &Parts,
    body: &Bytes,
    key: Arc<str>,
) -> (Fingerprint, RecordKey) {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let content_type = parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let fingerprint = Fingerprint::of_request(&parts.method, path, content_type, body);
    let record_key = RecordKey::from_shared(config.scope.scope(parts), key);
    (fingerprint, record_key)
}

/// A keyed request once its body is read: what both layers' keyed paths
/// start from.
pub(crate) struct KeyedRequest {
    /// The request's head.
    pub(crate) parts: Parts,
    /// Its body, whole.
    pub(crate) body: Bytes,
    /// Its `X-Request-Id`, for the answers.
    pub(crate) request_id: Option<HeaderValue>,
    /// Its fingerprint (see [`identify`]).
    pub(crate) fingerprint: Fingerprint,
    /// Where its record is filed (see [`identify`]).
    pub(crate) record_key: RecordKey,
}

impl KeyedRequest {
    /// Reads the body of a request routed [`Route::Keyed`] with `key` (at
    /// most `max_body`) and [`identify`]s it; or the problem to answer at
    /// once, with the request's id, when the body is refused.
    pub(crate) async fn read<B>(
        config: &Config,
        req: Request<B>,
        key: &Arc<str>,
    ) -> Result<KeyedRequest, (ProblemResponse, Option<HeaderValue>)>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let request_id = request_id(&parts.headers);
        let body = match read_request(body, &parts.headers, config.max_body).await {
            Ok(body) => body,
            Err(problem) => return Err((problem, request_id)),
        };
        let (fingerprint, record_key) = identify(config, &parts, &body, key.clone());
        Ok(KeyedRequest {
            parts,
            body,
            request_id,
            fingerprint,
            record_key,
        })
    }
}
