//! [`Idempotency`]: the service, and what happens to one keyed request.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use kneo_core::delivery::LateAnswer;
use kneo_core::{BoxError, Delivery};
use tokio::sync::oneshot;
use tower_service::Service;

use super::answer::{not_processed, outcome_unknown, problems, replay, respond, stored_headers};
use super::body::Buffer;
use super::child::IdempotencyKey;
use super::config::Config;
use super::future::{ResponseBody, ResponseFuture};
use super::guard::Guard;
use super::request::{route, KeyedRequest, Route};
use crate::record::Fingerprint;
use crate::record::RecordKey;
use crate::record::{Completed, Completion, StoredResponse};
use crate::store::{Acquire, Store};
use kneo_core::problem::ProblemResponse;

/// The body the inner service sees: the original one when the layer let the
/// request through untouched, the buffered bytes when it read them to
/// fingerprint the request.
pub type RequestBody<B> = Either<B, Full<Bytes>>;

/// Middleware that enforces `Idempotency-Key`. See the [module docs](super).
#[derive(Clone)]
pub struct Idempotency<S, St> {
    pub(crate) inner: S,
    pub(crate) store: St,
    pub(crate) config: Arc<Config>,
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

    kneo_core::define_inner_service_accessors!();
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
        self.call_with(req, keyed)
    }
}

impl<S, St> Idempotency<S, St> {
    /// Every call, whatever the store: a request the layer passes through
    /// or refuses at once is answered at once; a keyed one is answered by
    /// `keyed`, given the ready inner service (a clone of which stays for
    /// the next call), the store, the configuration, the request and its key.
    pub(crate) fn call_with<ReqBody, ResBody, K, F>(
        &mut self,
        req: Request<ReqBody>,
        keyed: K,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
        St: Clone,
        K: FnOnce(S, St, Arc<Config>, Request<ReqBody>, Arc<str>) -> F,
        F: Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>> + Send + 'static,
    {
        let key = match route(&self.config, req.method(), req.headers()) {
            Route::Pass => {
                return ResponseFuture::passthrough(self.inner.call(req.map(Either::Left)))
            }
            Route::Refuse(problem, id) => {
                return ResponseFuture::ready(respond(problem, id.as_ref()))
            }
            Route::Keyed(key) => key,
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let future = keyed(inner, self.store.clone(), self.config.clone(), req, key);
        ResponseFuture::keyed(Box::pin(future))
    }
}

/// One keyed request: read and fingerprint it, claim, then hand the work to
/// its own task ([`Work::claim_and_run`]) and wait for its answer.
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
    let request = match KeyedRequest::read(&config, req, &key).await {
        Ok(request) => request,
        Err((problem, id)) => return Ok(respond(problem, id.as_ref())),
    };
    let answer = |problem: ProblemResponse| Ok(respond(problem, request.request_id.as_ref()));
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(idempotency_key = %key, "no tokio runtime to run the request on; refusing it");
        return answer(problems::unavailable());
    };
    let req = Request::from_parts(request.parts, Either::Right(Full::new(request.body)));
    let (tx, rx) = oneshot::channel();
    let work = Work {
        fingerprint: request.fingerprint,
        config,
        request_id: request.request_id.clone(),
    };
    // From the claim on, nothing is left to the caller's future: a hang-up
    // while the claim is on its way to the store must not strand it.
    runtime.spawn(work.claim_and_run(store, request.record_key, inner, req, tx));
    match rx.await {
        Ok(Answer::Response(res)) => Ok(res),
        Ok(Answer::Failed(error)) => Err(error),
        Ok(Answer::Panicked(panic)) => std::panic::resume_unwind(panic),
        // The caller is still here: the task ended without a word, which
        // only a runtime shutting down does.
        Err(_) => answer(problems::interrupted()),
    }
}

/// Claims the key; while the same request holds it, waits up to
/// [`wait_for_first`](crate::IdempotencyLayer::wait_for_first) for it to end,
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
    /// Claims the key and, when it is ours and the caller still waits, runs
    /// the work; otherwise answers as the claim says. A caller that hung up
    /// before the handler began gets its claim released: nothing happened.
    async fn claim_and_run<S, St, ReqBody, ResBody>(
        self,
        store: St,
        key: RecordKey,
        mut inner: S,
        mut req: Request<RequestBody<ReqBody>>,
        answer: oneshot::Sender<Answer<ResBody, S::Error>>,
    ) where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        St: Store,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let fingerprint = self.fingerprint;
        let id = self.request_id.as_ref();
        let refuse = |problem| Answer::Response(respond(problem, id));
        let claim = match claim_or_wait(&store, &key, fingerprint, &self.config).await {
            Ok(Acquire::Claimed(claim)) => claim,
            Ok(Acquire::InFlight(holder)) => {
                let problem = if holder == fingerprint {
                    problems::in_use()
                } else {
                    problems::mismatch()
                };
                let _ = answer.send(refuse(problem));
                return;
            }
            Ok(Acquire::Completed(done)) if done.fingerprint() != fingerprint => {
                let _ = answer.send(refuse(problems::mismatch()));
                return;
            }
            Ok(Acquire::Completed(done)) => {
                let _ = answer.send(Answer::Response(replay(done.into_outcome(), id)));
                return;
            }
            // Open only when the store could not be reached: a full store or
            // a record this version cannot read is an answer, not an outage.
            Err(error) if self.config.fail_open && !error.is_full() && !error.is_corrupt() => {
                tracing::warn!(
                    idempotency_key = %key.key(),
                    %error,
                    "idempotency store unavailable; running the request without a claim (fail open)"
                );
                let result = match inner.call(req).await {
                    Ok(res) => Answer::Response(res.map(ResponseBody::inner)),
                    Err(error) => Answer::Failed(error),
                };
                let _ = answer.send(result);
                return;
            }
            Err(error) => {
                tracing::error!(idempotency_key = %key.key(), %error, "idempotency store unavailable; refusing the request");
                let _ = answer.send(refuse(problems::unavailable()));
                return;
            }
        };
        let mut guard = Guard::new(store, key, claim, &self.config);
        if answer.is_closed() {
            tracing::debug!(idempotency_key = %guard.key().key(), "the caller hung up before the handler began; releasing its claim");
            guard.release().await;
            return;
        }
        let (late, late_answer) = late_answer(&self.config);
        req.extensions_mut().insert(late);
        req.extensions_mut()
            .insert(IdempotencyKey::new(guard.key().shared_key()));
        // The work runs to its end while the claim is renewed.
        let heartbeat = guard.heartbeat(self.config.lease, self.config.max_hold);
        let work = self.work(guard, inner, req, answer, late_answer);
        futures_util::pin_mut!(heartbeat, work);
        // The heartbeat never ends; the work does.
        futures_util::future::select(work, heartbeat).await;
    }

    /// Runs the handler, then settles the claim by what it answered: a
    /// failure keeps the key with nothing to replay; "not processed"
    /// releases it; a gateway's lost or late answer is recorded as such;
    /// anything else is recorded and answered.
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
        let not_stored = Completed::new(
            self.fingerprint,
            Completion::NotStored(StatusCode::INTERNAL_SERVER_ERROR),
        );
        let res = match AssertUnwindSafe(async { inner.call(req).await })
            .catch_unwind()
            .await
        {
            Ok(Ok(res)) => res,
            // The handler began: whatever it did may have been applied.
            // Keep the key, with no response to replay (a retry gets 410).
            Ok(Err(error)) => {
                guard.complete(not_stored).await;
                let _ = answer.send(Answer::Failed(error));
                return;
            }
            Err(panic) => {
                guard.complete(not_stored).await;
                let _ = answer.send(Answer::Panicked(panic));
                return;
            }
        };
        if not_processed(&res) {
            // Nothing reached the upstream, or the handler said it did not
            // process the request: let a retry run.
            guard.release().await;
            let _ = answer.send(Answer::Response(res.map(ResponseBody::inner)));
            return;
        }
        match res.extensions().get::<Delivery>().copied() {
            Some(delivery) => self.gateway(guard, res, delivery, answer, late).await,
            None => self.record(guard, res, answer).await,
        }
    }

    /// A gateway's own answer (its `Delivery` says the upstream's was lost
    /// or late): the caller gets it now; the record says what is known.
    async fn gateway<St, ResBody, E>(
        self,
        mut guard: Guard<St>,
        res: Response<ResBody>,
        delivery: Delivery,
        answer: oneshot::Sender<Answer<ResBody, E>>,
        late: LateReceiver,
    ) where
        St: Store,
        ResBody: Body<Data = Bytes> + Unpin,
    {
        let status = res.status();
        let res = res.map(ResponseBody::inner);
        let record = match delivery {
            // The attempt timed out after it was sent: the caller gets the
            // gateway's answer now; the record waits (the claim renewed
            // meanwhile) for the upstream's own answer.
            Delivery::TimedOut => {
                let _ = answer.send(Answer::Response(res));
                let late = tokio::time::timeout(self.config.max_hold, late).await;
                match late.ok().and_then(Result::ok) {
                    Some(late) if not_processed(&late) => {
                        guard.release().await;
                        return;
                    }
                    Some(late) => {
                        let (parts, body) = late.into_parts();
                        match body {
                            Some(body) => {
                                let headers =
                                    stored_headers(&parts.headers, self.request_id.as_ref());
                                Completion::Stored(StoredResponse::new(parts.status, headers, body))
                            }
                            None => Completion::NotStored(parts.status),
                        }
                    }
                    None => Completion::Stored(outcome_unknown(status, delivery)),
                }
            }
            // It sent the request and lost the answer: record that the
            // outcome is unknown, never the gateway's answer as the
            // upstream's; then answer.
            _ => {
                let stored = Completion::Stored(outcome_unknown(status, delivery));
                guard
                    .complete(Completed::new(self.fingerprint, stored))
                    .await;
                let _ = answer.send(Answer::Response(res));
                return;
            }
        };
        guard
            .complete(Completed::new(self.fingerprint, record))
            .await;
    }

    /// The handler's answer: recorded, then answered. A head alone, or a
    /// body whole in its first frame (the common JSON answer), is recorded
    /// first and answered whole, head and body in one write (sent apart, the
    /// body would wait on Nagle's algorithm for the ACK of the head, which
    /// the peer delays: 40 ms on Linux). A longer body is [streamed](Self::stream).
    async fn record<St, ResBody, E>(
        self,
        mut guard: Guard<St>,
        res: Response<ResBody>,
        answer: oneshot::Sender<Answer<ResBody, E>>,
    ) where
        St: Store,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let status = res.status();
        let (parts, mut body) = res.into_parts();
        let headers = stored_headers(&parts.headers, self.request_id.as_ref());
        if body.is_end_stream() {
            self.keep(&mut guard, status, headers, Bytes::new()).await;
            let res = Response::from_parts(parts, ResponseBody::inner(body));
            let _ = answer.send(Answer::Response(res));
            return;
        }
        let hint = body.size_hint();
        let first = body
            .frame()
            .await
            .map(|r| r.map_err(Into::<BoxError>::into));
        if let Some(data) = first.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            let len = data.len() as u64;
            let whole = body.is_end_stream() || hint.exact() == Some(len);
            if whole && !self.config.too_big_to_store(len) {
                let data = data.clone();
                self.keep(&mut guard, status, headers, data.clone()).await;
                let res = Response::from_parts(parts, ResponseBody::full(data));
                let _ = answer.send(Answer::Response(res));
                return;
            }
        }
        let head = Response::from_parts(parts, ());
        let body = Streamed { body, hint, first };
        self.stream(guard, head, body, headers, answer).await;
    }

    /// A body that comes in frames: each goes to the caller as it arrives
    /// and into the recording (until it outgrows `max_response`). The last
    /// bytes go out only once the record is kept.
    async fn stream<St, ResBody, E>(
        self,
        mut guard: Guard<St>,
        head: Response<()>,
        body: Streamed<ResBody>,
        headers: Vec<(HeaderName, HeaderValue)>,
        answer: oneshot::Sender<Answer<ResBody, E>>,
    ) where
        St: Store,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let status = head.status();
        let not_stored = Completed::new(self.fingerprint, Completion::NotStored(status));
        let Streamed {
            mut body,
            hint,
            first,
        } = body;
        let mut pending = Some(first);
        let (frames, caller_body) = ResponseBody::channel(hint);
        let caller = head.map(|()| caller_body);
        // A caller that has gone away is not waited for; the body is still
        // read to its end and recorded.
        let mut frames = answer
            .send(Answer::Response(caller))
            .is_ok()
            .then_some(frames);
        let mut recording = Some(Buffer::Empty);
        if self.config.too_big_to_store(hint.lower()) {
            recording = None;
            guard.complete(not_stored.clone()).await;
        }
        let mut headers = Some(headers);
        let mut read: u64 = 0;
        loop {
            // The handler's error type need not be `Send`: convert it at once.
            let next = match pending.take() {
                Some(first) => first,
                None => body
                    .frame()
                    .await
                    .map(|r| r.map_err(Into::<BoxError>::into)),
            };
            let frame = match next {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    // The head went out, so the work was done: keep the key
                    // (a retry gets 410); the caller gets what arrived, then
                    // the error, as it would without a key.
                    if recording.is_some() {
                        guard.complete(not_stored).await;
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
                    if self.config.too_big_to_store(buf.len() as u64) {
                        recording = None;
                        guard.complete(not_stored.clone()).await;
                    }
                }
            }
            // The last bytes go out only once the record is kept: a caller
            // that has all of a response (its length known) may retry at
            // once, and must find the replay.
            let last = body.is_end_stream() || hint.exact() == Some(read);
            if last {
                if let (Some(buf), Some(headers)) = (recording.take(), headers.take()) {
                    self.keep(&mut guard, status, headers, buf.freeze()).await;
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
            self.keep(&mut guard, status, headers, buf.freeze()).await;
        }
        // Only now does the caller's body end: a caller that has read its
        // response to the end and retries finds the record.
        drop(frames);
    }

    /// Records the handler's response, whole, for replays.
    async fn keep<St: Store>(
        &self,
        guard: &mut Guard<St>,
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) {
        let stored = StoredResponse::new(status, headers, body);
        guard
            .complete(Completed::new(self.fingerprint, Completion::Stored(stored)))
            .await;
    }
}

/// A response body being streamed to the caller: the body, what it said of
/// its size before a byte was read, and the first frame, already read.
struct Streamed<B> {
    body: B,
    hint: SizeHint,
    first: Option<Result<Frame<Bytes>, BoxError>>,
}
