//! [`Idempotency`]: the service, and what happens to one keyed request.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRAILER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use kneo_core::delivery::LateAnswer;
use kneo_core::{codes, is_valid_request_id, BoxError, Delivery, X_REQUEST_ID, X_SHOULD_RETRY};
use tokio::sync::oneshot;
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

/// `Original-Request: <id>` on a replay: the request id of the request whose
/// response it is (Stripe's header of the same name). The replay's own
/// `X-Request-ID` is the retry's.
pub const ORIGINAL_REQUEST: HeaderName = HeaderName::from_static("original-request");

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
            Ok(None) => {
                let id = request_id(req.headers());
                return ResponseFuture::ready(respond(problems::missing(), id.as_ref()));
            }
            Err(e) => {
                let id = request_id(req.headers());
                return ResponseFuture::ready(respond(problems::invalid(e), id.as_ref()));
            }
        };
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let future = keyed(inner, self.store.clone(), self.config.clone(), req, key);
        ResponseFuture::keyed(Box::pin(future))
    }
}

/// One keyed request: read and fingerprint it, claim, then hand the work to
/// its own task ([`Work::run`]) and wait for its answer.
async fn keyed<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    config: Arc<Config>,
    req: Request<ReqBody>,
    key: Arc<str>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let request_id = request_id(&parts.headers);
    let answer = |problem: ProblemResponse| Ok(respond(problem, request_id.as_ref()));
    let body = match read_request(body, &parts.headers, config.max_body).await {
        Ok(body) => body,
        Err(problem) => return answer(problem),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let content_type = parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let fingerprint = Fingerprint::of_request(&parts.method, path, content_type, &body);
    let record_key = RecordKey::from_shared(config.scope.scope(&parts), key.clone());

    let claim = match claim_or_wait(&store, &record_key, fingerprint, &config).await {
        Ok(Acquire::Claimed(claim)) => claim,
        Ok(Acquire::InFlight(holder)) if holder == fingerprint => return answer(problems::in_use()),
        Ok(Acquire::InFlight(_)) => return answer(problems::mismatch()),
        Ok(Acquire::Completed(done)) if done.fingerprint() != fingerprint => {
            return answer(problems::mismatch())
        }
        Ok(Acquire::Completed(done)) => {
            return Ok(replay(done.into_outcome(), request_id.as_ref()))
        }
        // Open only when the store could not be reached: a full store or a
        // record this version cannot read is an answer, not an outage.
        Err(error) if config.fail_open && !error.is_full() && !error.is_corrupt() => {
            tracing::warn!(
                idempotency_key = %key,
                %error,
                "idempotency store unavailable; running the request without a claim (fail open)"
            );
            let req = Request::from_parts(parts, Either::Right(Full::new(body)));
            let mut inner = inner;
            return Ok(inner.call(req).await?.map(ResponseBody::inner));
        }
        Err(error) => {
            tracing::error!(idempotency_key = %key, %error, "idempotency store unavailable; refusing the request");
            return answer(problems::unavailable());
        }
    };

    let guard = Guard::new(store, record_key, claim, &config);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Nothing ran: give the key back.
        tracing::error!(idempotency_key = %key, "no tokio runtime to run the request on; refusing it");
        let mut guard = guard;
        guard.release().await;
        return answer(problems::unavailable());
    };
    let mut req = Request::from_parts(parts, Either::Right(Full::new(body)));
    let (late, late_answer) = late_answer(&config);
    req.extensions_mut().insert(late);
    let (tx, rx) = oneshot::channel();
    let work = Work {
        fingerprint,
        config,
        request_id: request_id.clone(),
    };
    runtime.spawn(work.run(guard, inner, req, tx, late_answer));
    match rx.await {
        Ok(Answer::Response(res)) => Ok(res),
        Ok(Answer::Failed(error)) => Err(error),
        Ok(Answer::Panicked(panic)) => std::panic::resume_unwind(panic),
        // The task was cancelled before it answered: the runtime is shutting down.
        Err(_) => answer(problems::interrupted()),
    }
}

/// Claims the key; while the same request holds it, waits up to
/// [`wait_for_first`](IdempotencyLayer::wait_for_first) for it to end,
/// asking the store again with backoff (10 ms, doubling, at most 200 ms
/// apart), so that a duplicate gets the first run's response (or runs, if
/// the first gave its key back) instead of a `409`.
async fn claim_or_wait<St: Store>(
    store: &St,
    key: &RecordKey,
    fingerprint: Fingerprint,
    config: &Config,
) -> Result<Acquire, crate::store::StoreError> {
    let mut acquired = store.claim(key, fingerprint, config.lease).await;
    if config.wait_for_first.is_zero() {
        return acquired;
    }
    let until = Instant::now() + config.wait_for_first;
    let mut wait = Duration::from_millis(10);
    while matches!(&acquired, Ok(Acquire::InFlight(holder)) if *holder == fingerprint) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(wait.min(left)).await;
        wait = (wait * 2).min(Duration::from_millis(200));
        acquired = store.claim(key, fingerprint, config.lease).await;
    }
    acquired
}

/// The upstream's answer to an attempt a gateway below gave up waiting for,
/// when it comes (see [`kneo_core::delivery`]).
type LateReceiver = oneshot::Receiver<Response<Option<Bytes>>>;

/// A [`LateAnswer`] for the request's extensions, and where its answer arrives.
fn late_answer(config: &Config) -> (LateAnswer, LateReceiver) {
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let late = LateAnswer::new(config.max_response, config.max_hold, move |answer| {
        let sender = tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(answer);
        }
    });
    (late, rx)
}

/// The request's `X-Request-ID`, when it has a valid one.
fn request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .cloned()
}

/// A problem answer, carrying the request's id.
fn respond<B>(
    problem: ProblemResponse,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody<B>> {
    match request_id.and_then(|id| id.to_str().ok()) {
        Some(id) => problem.request_id(id).to_response(),
        None => problem.to_response(),
    }
}

/// What the work's task tells the request that is waiting for it.
enum Answer<B, E> {
    Response(Response<ResponseBody<B>>),
    Failed(E),
    Panicked(Box<dyn Any + Send>),
}

/// One claimed request's work, on a task of its own so that the caller
/// hanging up cannot cancel it: the handler, its response streamed to the
/// caller while it is recorded, and the record.
struct Work {
    fingerprint: Fingerprint,
    config: Arc<Config>,
    request_id: Option<HeaderValue>,
}

impl Work {
    /// Runs the work to its end while the claim is renewed.
    async fn run<S, St, Req, ResBody>(
        self,
        guard: Guard<St>,
        inner: S,
        req: Request<Req>,
        answer: oneshot::Sender<Answer<ResBody, S::Error>>,
        late: LateReceiver,
    ) where
        S: Service<Request<Req>, Response = Response<ResBody>>,
        St: Store,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let heartbeat = guard.heartbeat(self.config.lease, self.config.max_hold);
        let work = self.work(guard, inner, req, answer, late);
        futures_util::pin_mut!(heartbeat, work);
        // The heartbeat never ends; the work does.
        futures_util::future::select(work, heartbeat).await;
    }

    async fn work<S, St, Req, ResBody>(
        self,
        mut guard: Guard<St>,
        mut inner: S,
        req: Request<Req>,
        answer: oneshot::Sender<Answer<ResBody, S::Error>>,
        late: LateReceiver,
    ) where
        S: Service<Request<Req>, Response = Response<ResBody>>,
        St: Store,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let fingerprint = self.fingerprint;
        let not_stored =
            |status: StatusCode| Completed::new(fingerprint, Outcome::NotStored(status));
        let res = match AssertUnwindSafe(async { inner.call(req).await })
            .catch_unwind()
            .await
        {
            Ok(Ok(res)) => res,
            // The handler began: whatever it did may have been applied.
            // Keep the key, with no response to replay (a retry gets 410).
            Ok(Err(error)) => {
                guard
                    .complete(not_stored(StatusCode::INTERNAL_SERVER_ERROR))
                    .await;
                let _ = answer.send(Answer::Failed(error));
                return;
            }
            Err(panic) => {
                guard
                    .complete(not_stored(StatusCode::INTERNAL_SERVER_ERROR))
                    .await;
                let _ = answer.send(Answer::Panicked(panic));
                return;
            }
        };

        let status = res.status();
        match res.extensions().get::<Delivery>().copied() {
            // Nothing reached the upstream, or the handler said it did not
            // process the request: let a retry run.
            Some(Delivery::NotSent) => {
                guard.release().await;
                let _ = answer.send(Answer::Response(res.map(ResponseBody::inner)));
                return;
            }
            _ if not_processed(status) => {
                guard.release().await;
                let _ = answer.send(Answer::Response(res.map(ResponseBody::inner)));
                return;
            }
            // A gateway's attempt timed out after it was sent: the caller
            // gets the gateway's answer now; the record waits (the claim
            // renewed meanwhile) for the upstream's own answer.
            Some(Delivery::TimedOut) => {
                let _ = answer.send(Answer::Response(res.map(ResponseBody::inner)));
                let late = tokio::time::timeout(self.config.max_hold, late).await;
                let record = match late.ok().and_then(Result::ok) {
                    Some(late) if not_processed(late.status()) => {
                        guard.release().await;
                        return;
                    }
                    Some(late) => {
                        let (parts, body) = late.into_parts();
                        match body {
                            Some(body) => {
                                let headers =
                                    stored_headers(&parts.headers, self.request_id.as_ref());
                                Outcome::Stored(StoredResponse::new(parts.status, headers, body))
                            }
                            None => Outcome::NotStored(parts.status),
                        }
                    }
                    None => Outcome::Stored(outcome_unknown(status, Delivery::TimedOut)),
                };
                guard.complete(Completed::new(fingerprint, record)).await;
                return;
            }
            // A gateway sent the request and lost its answer: record that
            // the outcome is unknown, never the gateway's answer as the
            // upstream's.
            Some(delivery) => {
                let stored = outcome_unknown(status, delivery);
                guard
                    .complete(Completed::new(fingerprint, Outcome::Stored(stored)))
                    .await;
                let _ = answer.send(Answer::Response(res.map(ResponseBody::inner)));
                return;
            }
            None => {}
        }

        let (parts, mut body) = res.into_parts();
        let headers = stored_headers(&parts.headers, self.request_id.as_ref());
        if body.is_end_stream() {
            // No body: the head is the whole answer, so it goes out once the
            // record is kept.
            let stored = StoredResponse::new(status, headers, Bytes::new());
            guard
                .complete(Completed::new(fingerprint, Outcome::Stored(stored)))
                .await;
            let res = Response::from_parts(parts, ResponseBody::inner(body));
            let _ = answer.send(Answer::Response(res));
            return;
        }
        let hint = body.size_hint();
        let (frames, caller_body) = ResponseBody::channel(hint);
        let caller = Response::from_parts(parts, caller_body);
        // A caller that has gone away is not waited for; the body is still
        // read to its end and recorded.
        let mut frames = answer
            .send(Answer::Response(caller))
            .is_ok()
            .then_some(frames);
        let max = self.config.max_response;
        let too_big = |len: u64| usize::try_from(len).map_or(true, |len| len > max);
        let mut recording = Some(Buffer::Empty);
        if too_big(hint.lower()) {
            recording = None;
            guard.complete(not_stored(status)).await;
        }
        let mut headers = Some(headers);
        let mut read: u64 = 0;
        loop {
            // The handler's error type need not be `Send`: convert it at once.
            let next = body
                .frame()
                .await
                .map(|r| r.map_err(Into::<BoxError>::into));
            let frame = match next {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    // The head went out, so the work was done: keep the key
                    // (a retry gets 410); the caller gets what arrived, then
                    // the error, as it would without a key.
                    if recording.is_some() {
                        guard.complete(not_stored(status)).await;
                    }
                    if let Some(frames) = frames {
                        let _ = frames.send(Err(error)).await;
                    }
                    return;
                }
            };
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
                if let Some(buf) = recording.as_mut() {
                    buf.push(data.clone());
                    if too_big(buf.len() as u64) {
                        recording = None;
                        guard.complete(not_stored(status)).await;
                    }
                }
            }
            // The last bytes go out only once the record is kept: a caller
            // that has all of a response (its length known) may retry at
            // once, and must find the replay.
            let last = body.is_end_stream() || hint.exact() == Some(read);
            if last {
                if let (Some(buf), Some(headers)) = (recording.take(), headers.take()) {
                    let stored = StoredResponse::new(status, headers, buf.freeze());
                    guard
                        .complete(Completed::new(fingerprint, Outcome::Stored(stored)))
                        .await;
                }
            }
            // Trailers go to the caller; they are not stored.
            if let Some(tx) = &frames {
                if tx.send(Ok(frame)).await.is_err() {
                    frames = None;
                }
            }
        }
        if let (Some(buf), Some(headers)) = (recording, headers) {
            let stored = StoredResponse::new(status, headers, buf.freeze());
            guard
                .complete(Completed::new(fingerprint, Outcome::Stored(stored)))
                .await;
        }
        // Only now does the caller's body end: a caller that has read its
        // response to the end and retries finds the record.
        drop(frames);
    }
}

/// `429` and `503` say the request was not processed.
fn not_processed(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The headers kept for replays: all but `Trailer` (trailers are not
/// stored), with an `X-Request-ID` that echoes the request's own kept as
/// `Original-Request` (a replay answers with the retry's id). An id the
/// handler set itself is part of its answer and is kept as it is.
fn stored_headers(
    headers: &HeaderMap,
    request_id: Option<&HeaderValue>,
) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| *name != TRAILER)
        .map(|(name, value)| {
            if name == X_REQUEST_ID && Some(value) == request_id {
                (ORIGINAL_REQUEST, value.clone())
            } else {
                (name.clone(), value.clone())
            }
        })
        .collect()
}

/// The record of a request a gateway sent and lost the answer to: a problem
/// with code `upstream_outcome_unknown` and the status the caller was told,
/// never to be retried.
fn outcome_unknown(status: StatusCode, delivery: Delivery) -> StoredResponse {
    let status = if status.is_server_error() {
        status
    } else {
        StatusCode::BAD_GATEWAY
    };
    let res: Response<Bytes> = problems::outcome_unknown(status, delivery).to_response();
    let (parts, body) = res.into_parts();
    let mut headers: Vec<_> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    headers.push((X_SHOULD_RETRY, HeaderValue::from_static("false")));
    StoredResponse::new(status, headers, body)
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

/// The stored response, replayed with this request's id; or the problem
/// saying there is none.
fn replay<B>(outcome: Outcome, request_id: Option<&HeaderValue>) -> Response<ResponseBody<B>> {
    match outcome {
        Outcome::Stored(stored) => {
            let (status, headers, body) = stored.into_parts();
            let mut res = Response::new(ResponseBody::full(body));
            *res.status_mut() = status;
            let map = res.headers_mut();
            map.reserve(headers.len() + 2);
            for (name, value) in headers.iter() {
                map.append(name.clone(), value.clone());
            }
            if let Some(id) = request_id {
                map.entry(X_REQUEST_ID).or_insert_with(|| id.clone());
            }
            map.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            res
        }
        Outcome::NotStored(_) => respond(problems::not_stored(), request_id),
    }
}

/// The claim of one request's work: completed or released once, renewed
/// while the work runs.
///
/// A response that could not be stored (the store failed) is stored again in
/// the background, with backoff, for as long as the claim's lease lives: the
/// handler has run, and a retry after the lease would run it again, so the
/// record must land while the claim still holds the key. A guard dropped
/// before either (its task was cancelled: the runtime is shutting down)
/// leaves the claim to its lease: the work may have been applied.
struct Guard<St: Store> {
    store: St,
    key: RecordKey,
    claim: Claim,
    ttl: Duration,
    /// When the lease ends, as of the last renewal.
    lease_ends: Arc<Mutex<Instant>>,
    state: GuardState,
}

enum GuardState {
    Claimed,
    Completing(Completed),
    Done,
}

impl<St: Store> Guard<St> {
    fn new(store: St, key: RecordKey, claim: Claim, config: &Config) -> Self {
        Guard {
            store,
            key,
            claim,
            ttl: config.ttl,
            lease_ends: Arc::new(Mutex::new(Instant::now() + config.lease)),
            state: GuardState::Claimed,
        }
    }

    async fn release(&mut self) {
        let result = self.store.release(&self.key, &self.claim).await;
        self.state = GuardState::Done;
        log_release(&self.key, result);
    }

    /// Stores `record` for the claim, once; a second call does nothing.
    async fn complete(&mut self, record: Completed) {
        if !matches!(self.state, GuardState::Claimed) {
            return;
        }
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

    /// Renews the claim every third of `lease` for up to `max_hold`; never
    /// ends (the work it runs beside does).
    fn heartbeat(&self, lease: Duration, max_hold: Duration) -> impl Future<Output = ()> + Send {
        let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
        let lease_ends = self.lease_ends.clone();
        async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(lease / 3).await;
                if started.elapsed() >= max_hold {
                    tracing::warn!(
                        idempotency_key = %key.key(),
                        "the request has held its key for max_hold; no longer renewing its claim"
                    );
                    break;
                }
                let at = Instant::now();
                match store.renew(&key, &claim, lease).await {
                    Ok(true) => *lock(&lease_ends) = at + lease,
                    Ok(false) => {
                        tracing::error!(
                            idempotency_key = %key.key(),
                            "the claim ended before its work did; a retry may run the request again"
                        );
                        break;
                    }
                    Err(error) => tracing::warn!(
                        idempotency_key = %key.key(),
                        %error,
                        "could not renew the claim; trying again"
                    ),
                }
            }
            std::future::pending::<()>().await;
        }
    }

    /// Stores `record` on `runtime`, retrying while the lease lasts
    /// ([`complete_within_lease`]), and logs how it ended.
    fn complete_in_background(&self, runtime: &tokio::runtime::Handle, record: Completed) {
        let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
        let (ttl, lease_ends) = (self.ttl, *lock(&self.lease_ends));
        runtime.spawn(async move {
            let result =
                complete_within_lease(&store, &key, &claim, &record, ttl, lease_ends).await;
            log_complete(&key, result);
        });
    }
}

fn lock(m: &Mutex<Instant>) -> std::sync::MutexGuard<'_, Instant> {
    // Nothing panics while it is held.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        match std::mem::replace(&mut self.state, GuardState::Done) {
            GuardState::Done => {}
            GuardState::Claimed => tracing::warn!(
                idempotency_key = %self.key.key(),
                "request cancelled after it began; its key stays busy until the lease ends"
            ),
            GuardState::Completing(record) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    self.complete_in_background(&runtime, record);
                }
            }
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
            "This Idempotency-Key was used with a different request (method, path, query, media type or body).",
        )
    }

    pub(super) fn not_stored() -> ProblemResponse {
        ProblemResponse::new(StatusCode::GONE, codes::IDEMPOTENCY_RESPONSE_NOT_STORED)
            .title("Response not stored")
            .detail(
                "The request with this Idempotency-Key was processed, but its response was not kept (too large, cut off, or the handler failed); it will not be run again.",
            )
    }

    pub(super) fn outcome_unknown(status: StatusCode, delivery: Delivery) -> ProblemResponse {
        let detail = match delivery {
            Delivery::TimedOut => "The upstream did not answer in time, so this request may have been applied; it will not be sent again under this Idempotency-Key.",
            _ => "The connection to the upstream broke before its answer arrived, so this request may have been applied; it will not be sent again under this Idempotency-Key.",
        };
        ProblemResponse::new(status, codes::UPSTREAM_OUTCOME_UNKNOWN)
            .title("Upstream outcome unknown")
            .detail(detail)
    }

    pub(super) fn interrupted() -> ProblemResponse {
        ProblemResponse::new(StatusCode::INTERNAL_SERVER_ERROR, codes::SERVER_ERROR)
            .title("Request interrupted")
            .detail("The server stopped while the request ran; it may have been applied. Retry with the same Idempotency-Key to learn its outcome.")
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
