//! [`Idempotency`]: the service, and what happens to one keyed request.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use kneo_core::{codes, BoxError};
use tower_service::Service;

use super::fingerprint::Fingerprint;
use super::future::{ResponseBody, ResponseFuture};
use super::key::{self, KeyError, RecordKey};
use super::layer::{Config, IdempotencyLayer};
use super::record::{Claim, Completed, Outcome, StoredResponse};
use crate::problem::ProblemResponse;
use crate::store::{Acquire, Store};

/// `Idempotent-Replayed: true` marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a caller is told to wait before retrying a 409 or 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The body the inner service sees: the original one when the layer let the
/// request through untouched, the buffered bytes when it read them to
/// fingerprint the request.
pub type RequestBody<B> = Either<B, Full<Bytes>>;

/// Middleware that enforces `Idempotency-Key`. See the [module docs](super).
#[derive(Clone)]
pub struct Idempotency<S, St> {
    inner: S,
    store: St,
    config: Arc<Config>,
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, St> Idempotency<S, St> {
    /// Wraps `inner` with the default configuration and `store`.
    pub fn new(inner: S, store: St) -> Self {
        Self::from_parts(inner, store, Arc::new(Config::default()))
    }

    pub(crate) fn from_parts(inner: S, store: St, config: Arc<Config>) -> Self {
        Idempotency {
            inner,
            store,
            config,
        }
    }

    /// A layer with the default configuration (same as [`IdempotencyLayer::new`]).
    pub fn layer(store: St) -> IdempotencyLayer<St> {
        IdempotencyLayer::new(store)
    }

    define_inner_service_accessors!();
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, St>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !self.config.methods.contains(req.method()) {
            return ResponseFuture::passthrough(self.inner.call(req.map(Either::Left)));
        }
        let key = match key::parse(req.headers()) {
            Ok(Some(key)) => key,
            Ok(None) if !self.config.require => {
                return ResponseFuture::passthrough(self.inner.call(req.map(Either::Left)));
            }
            Ok(None) => return ResponseFuture::ready(problems::missing().to_response()),
            Err(e) => return ResponseFuture::ready(problems::invalid(e).to_response()),
        };
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let future = keyed(inner, self.store.clone(), self.config.clone(), req, key);
        ResponseFuture::keyed(Box::pin(future))
    }
}

/// One keyed request: read and fingerprint it, claim, run, store, answer.
async fn keyed<S, St, ReqBody, ResBody>(
    mut inner: S,
    store: St,
    config: Arc<Config>,
    req: Request<ReqBody>,
    key: Arc<str>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match read_request(body, &parts.headers, config.max_body).await {
        Ok(body) => body,
        Err(problem) => return Ok(problem.to_response()),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fingerprint = Fingerprint::of(&parts.method, path, &body);
    let record_key = RecordKey::from_shared(config.scope.scope(&parts), key.clone());

    let claim = match store.claim(&record_key, fingerprint, config.lease).await {
        Ok(Acquire::Claimed(claim)) => claim,
        Ok(Acquire::InFlight(holder)) if holder == fingerprint => {
            return Ok(problems::in_use().to_response())
        }
        Ok(Acquire::InFlight(_)) => return Ok(problems::mismatch().to_response()),
        Ok(Acquire::Completed(done)) if done.fingerprint() != fingerprint => {
            return Ok(problems::mismatch().to_response())
        }
        Ok(Acquire::Completed(done)) => return Ok(replay(done.into_outcome())),
        Err(error) if config.fail_open => {
            tracing::warn!(
                idempotency_key = %key,
                %error,
                "idempotency store unavailable; running the request without a claim (fail open)"
            );
            let req = Request::from_parts(parts, Either::Right(Full::new(body)));
            return Ok(inner.call(req).await?.map(ResponseBody::inner));
        }
        Err(error) => {
            tracing::error!(idempotency_key = %key, %error, "idempotency store unavailable; refusing the request");
            return Ok(problems::unavailable().to_response());
        }
    };

    let lease_ends = Instant::now() + config.lease;
    let mut guard = Guard::new(store, record_key, claim, config.ttl, lease_ends);
    let req = Request::from_parts(parts, Either::Right(Full::new(body)));
    let res = match AssertUnwindSafe(async { inner.call(req).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(res)) => res,
        Ok(Err(error)) => {
            guard.release().await;
            return Err(error);
        }
        Err(panic) => {
            guard.release().await;
            std::panic::resume_unwind(panic);
        }
    };

    let status = res.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        // Not processed: let a retry run.
        guard.release().await;
        return Ok(res.map(ResponseBody::inner));
    }

    let (parts, mut body) = res.into_parts();
    let too_big = |len: u64| usize::try_from(len).map_or(true, |len| len > config.max_response);
    if too_big(body.size_hint().lower()) {
        guard
            .complete(Completed::new(fingerprint, Outcome::NotStored(status)))
            .await;
        return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
    }
    let mut buf = Buffer::Empty;
    loop {
        let next = body
            .frame()
            .await
            .map(|r| r.map_err(Into::<BoxError>::into));
        match next {
            None => break,
            Some(Ok(frame)) => {
                // Trailers are not stored (nor sent to the first caller).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.push(data);
                if too_big(buf.len() as u64) {
                    guard
                        .complete(Completed::new(fingerprint, Outcome::NotStored(status)))
                        .await;
                    return Ok(Response::from_parts(
                        parts,
                        ResponseBody::spill(buf.freeze(), body),
                    ));
                }
            }
            Some(Err(error)) => {
                // The response failed to materialise: treat it like an error
                // from the service.
                guard.release().await;
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::failed(buf.freeze(), error),
                ));
            }
        }
    }
    let bytes = buf.freeze();
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let stored = StoredResponse::new(status, headers, bytes.clone());
    guard
        .complete(Completed::new(fingerprint, Outcome::Stored(stored)))
        .await;
    Ok(Response::from_parts(parts, ResponseBody::full(bytes)))
}

/// Reads a keyed request's body, up to `max` bytes.
async fn read_request<B>(body: B, headers: &HeaderMap, max: usize) -> Result<Bytes, ProblemResponse>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| usize::try_from(len).map_or(true, |len| len > max)) {
        return Err(problems::too_large(max));
    }
    let mut body = std::pin::pin!(body);
    let mut buf = Buffer::Empty;
    while let Some(frame) = body.as_mut().frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    buf.push(data);
                    if buf.len() > max {
                        return Err(problems::too_large(max));
                    }
                }
            }
            Err(error) => {
                let error: BoxError = error.into();
                tracing::debug!(%error, "keyed request body could not be read");
                return Err(problems::unreadable());
            }
        }
    }
    Ok(buf.freeze())
}

/// A response body being collected, copied only when it comes in pieces.
enum Buffer {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Buffer {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Buffer::Empty) {
            Buffer::Empty => Buffer::One(data),
            Buffer::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Buffer::Many(many)
            }
            Buffer::Many(mut many) => {
                many.extend_from_slice(&data);
                Buffer::Many(many)
            }
        };
    }

    fn len(&self) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(b) => b.len(),
            Buffer::Many(b) => b.len(),
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Buffer::Empty => Bytes::new(),
            Buffer::One(b) => b,
            Buffer::Many(b) => b.freeze(),
        }
    }
}

/// The stored response, replayed; or the problem saying there is none.
fn replay<B>(outcome: Outcome) -> Response<ResponseBody<B>> {
    match outcome {
        Outcome::Stored(stored) => {
            let (status, headers, body) = stored.into_parts();
            let mut res = Response::new(ResponseBody::full(body));
            *res.status_mut() = status;
            let map = res.headers_mut();
            map.reserve(headers.len() + 1);
            for (name, value) in headers.iter() {
                map.append(name.clone(), value.clone());
            }
            map.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            res
        }
        Outcome::NotStored(_) => problems::not_stored().to_response(),
    }
}

/// Releases or completes the claim whatever happens to the request future:
/// awaited on the normal paths, spawned on tokio from `Drop` when the future
/// is dropped midway (the client hung up). Both store calls are fenced, so
/// doing one twice is harmless.
///
/// A response that could not be stored (the store failed) is stored again in
/// the background, with backoff, for as long as the claim's lease lives: the
/// handler has run, and a retry after the lease would run it again, so the
/// record must land while the claim still holds the key.
struct Guard<St: Store> {
    store: St,
    key: RecordKey,
    claim: Claim,
    ttl: Duration,
    lease_ends: Instant,
    state: GuardState,
}

enum GuardState {
    Claimed,
    Completing(Completed),
    Done,
}

impl<St: Store> Guard<St> {
    fn new(store: St, key: RecordKey, claim: Claim, ttl: Duration, lease_ends: Instant) -> Self {
        Guard {
            store,
            key,
            claim,
            ttl,
            lease_ends,
            state: GuardState::Claimed,
        }
    }

    async fn release(&mut self) {
        let result = self.store.release(&self.key, &self.claim).await;
        self.state = GuardState::Done;
        log_release(&self.key, result);
    }

    async fn complete(&mut self, record: Completed) {
        self.state = GuardState::Completing(record);
        let GuardState::Completing(record) = &self.state else {
            unreachable!("invariant: the state was just set");
        };
        let result = self
            .store
            .complete(&self.key, &self.claim, record, self.ttl)
            .await;
        let state = std::mem::replace(&mut self.state, GuardState::Done);
        match (result, state, tokio::runtime::Handle::try_current()) {
            (Err(error), GuardState::Completing(record), Ok(runtime)) => {
                tracing::warn!(
                    idempotency_key = %self.key.key(),
                    %error,
                    "could not store the response; retrying while the lease lasts"
                );
                self.complete_in_background(&runtime, record);
            }
            (result, _, _) => log_complete(&self.key, result),
        }
    }

    /// Stores `record` on `runtime`, retrying while the lease lasts
    /// ([`complete_within_lease`]), and logs how it ended.
    fn complete_in_background(&self, runtime: &tokio::runtime::Handle, record: Completed) {
        let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
        let (ttl, lease_ends) = (self.ttl, self.lease_ends);
        runtime.spawn(async move {
            let result =
                complete_within_lease(&store, &key, &claim, &record, ttl, lease_ends).await;
            log_complete(&key, result);
        });
    }
}

/// Stores `record` for `claim`, retrying store errors with backoff (10 ms,
/// doubling, at most 500 ms apart) until it is stored, the claim is found
/// gone (fenced), or the lease ends.
async fn complete_within_lease<St: Store>(
    store: &St,
    key: &RecordKey,
    claim: &Claim,
    record: &Completed,
    ttl: Duration,
    lease_ends: Instant,
) -> Result<bool, crate::store::StoreError> {
    let mut wait = Duration::from_millis(10);
    loop {
        match store.complete(key, claim, record, ttl).await {
            Err(_) if Instant::now() + wait < lease_ends => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

impl<St: Store> Drop for Guard<St> {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, GuardState::Done);
        if matches!(state, GuardState::Done) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to finish on: the lease ends the claim.
            return;
        };
        match state {
            GuardState::Claimed => {
                let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
                tracing::debug!(idempotency_key = %key.key(), "request dropped; releasing its claim");
                runtime.spawn(async move {
                    let result = store.release(&key, &claim).await;
                    log_release(&key, result);
                });
            }
            GuardState::Completing(record) => self.complete_in_background(&runtime, record),
            GuardState::Done => {}
        }
    }
}

fn log_release(key: &RecordKey, result: Result<bool, crate::store::StoreError>) {
    match result {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(idempotency_key = %key.key(), "claim had already ended; nothing to release")
        }
        Err(error) => tracing::warn!(
            idempotency_key = %key.key(),
            %error,
            "could not release the claim; the key stays busy until its lease ends"
        ),
    }
}

fn log_complete(key: &RecordKey, result: Result<bool, crate::store::StoreError>) {
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            idempotency_key = %key.key(),
            "the handler outlived its lease and the key was claimed again; its response was sent but not stored"
        ),
        Err(error) => tracing::error!(
            idempotency_key = %key.key(),
            %error,
            "could not store the response within its lease; once the lease ends a retry runs again"
        ),
    }
}

/// The problems this layer answers with.
mod problems {
    use super::*;

    pub(super) fn missing() -> ProblemResponse {
        ProblemResponse::new(StatusCode::BAD_REQUEST, codes::IDEMPOTENCY_KEY_MISSING)
            .title("Idempotency-Key required")
            .detail("This request must carry an Idempotency-Key header.")
    }

    pub(super) fn invalid(e: KeyError) -> ProblemResponse {
        ProblemResponse::new(StatusCode::BAD_REQUEST, codes::IDEMPOTENCY_KEY_INVALID)
            .title("Invalid Idempotency-Key")
            .detail(e.detail())
    }

    pub(super) fn too_large(max: usize) -> ProblemResponse {
        ProblemResponse::new(StatusCode::PAYLOAD_TOO_LARGE, codes::REQUEST_BODY_TOO_LARGE)
            .title("Request body too large")
            .detail(format!(
                "A request with an Idempotency-Key may have a body of at most {max} bytes."
            ))
    }

    pub(super) fn unreadable() -> ProblemResponse {
        ProblemResponse::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST)
            .title("Request body unreadable")
            .detail("The request body could not be read.")
    }

    pub(super) fn in_use() -> ProblemResponse {
        ProblemResponse::new(StatusCode::CONFLICT, codes::IDEMPOTENCY_KEY_IN_USE)
            .title("Request in progress")
            .detail("A request with this Idempotency-Key is still being processed; retry later.")
            .retry_after(RETRY_AFTER)
    }

    pub(super) fn mismatch() -> ProblemResponse {
        ProblemResponse::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::IDEMPOTENCY_KEY_MISMATCH,
        )
        .title("Idempotency-Key reused")
        .detail(
            "This Idempotency-Key was used with a different request (method, path, query or body).",
        )
    }

    pub(super) fn not_stored() -> ProblemResponse {
        ProblemResponse::new(StatusCode::GONE, codes::IDEMPOTENCY_RESPONSE_NOT_STORED)
            .title("Response not stored")
            .detail(
                "The request with this Idempotency-Key was processed, but its response was too large to keep; it will not be run again.",
            )
    }

    pub(super) fn unavailable() -> ProblemResponse {
        ProblemResponse::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::IDEMPOTENCY_STORE_UNAVAILABLE,
        )
        .title("Idempotency store unavailable")
        .detail("The request was not processed; retry later.")
        .retry_after(RETRY_AFTER)
    }
}
