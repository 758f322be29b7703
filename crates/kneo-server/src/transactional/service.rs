//! [`Idempotency`] over [`Transactional`]: one keyed request, claimed,
//! handled and recorded in one Postgres transaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use kneo_core::{BoxError, Delivery};
use sqlx::{Postgres, Row, Transaction};
use tower_service::Service;

use super::handle::IdempotentTransaction;
use super::Transactional;
use crate::idempotency::answer::{
    not_processed, outcome_unknown, problems, replay, respond, stored_headers,
};
use crate::idempotency::body::Buffer;
use crate::idempotency::config::Config;
use crate::idempotency::request::KeyedRequest;
use crate::idempotency::{
    Claim, Completed, Completion, FencingToken, Fingerprint, Idempotency, IdempotencyKey, Record,
    RecordKey, RequestBody, ResponseBody, ResponseFuture, StoredResponse,
};
use crate::store::{redacted, secs};
use kneo_core::problem::ProblemResponse;

/// Inserts the key's row, or replaces an expired one; no row back when a
/// live one is there. A row another open transaction inserted makes this
/// wait (up to `lock_timeout`) for that transaction to end.
const CLAIM: &str = "\
INSERT INTO kneo_idempotency (scope, key, value, expires_at)
VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at
    WHERE kneo_idempotency.expires_at <= clock_timestamp()
RETURNING 1";

/// The live row of a key.
const READ: &str = "\
SELECT value FROM kneo_idempotency
WHERE scope = $1 AND key = $2 AND expires_at > clock_timestamp()";

/// The response, into the row this transaction claimed.
const RECORD: &str = "\
UPDATE kneo_idempotency SET value = $3, expires_at = clock_timestamp() + make_interval(secs => $4)
WHERE scope = $1 AND key = $2";

/// Postgres' `lock_not_available`: `lock_timeout` ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, Transactional>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.call_with(req, keyed)
    }
}

/// One keyed request in one transaction; see the [module docs](super).
async fn keyed<S, ReqBody, ResBody>(
    mut inner: S,
    db: Transactional,
    config: Arc<Config>,
    req: Request<ReqBody>,
    key: Arc<str>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let request = match KeyedRequest::read(&config, req, &key).await {
        Ok(request) => request,
        Err((problem, id)) => return Ok(respond(problem, id.as_ref())),
    };
    let answer = |problem: ProblemResponse| Ok(respond(problem, request.request_id.as_ref()));

    let (fingerprint, record_key) = (request.fingerprint, &request.record_key);
    let tx = match claim(&db, &config, record_key, fingerprint).await {
        Ok(Claimed::Ours(tx)) => tx,
        Ok(Claimed::Theirs(record)) => {
            return Ok(answer_theirs(
                record,
                fingerprint,
                request.request_id.as_ref(),
            ))
        }
        Err(Refused::Busy) => return answer(problems::in_use()),
        Err(Refused::Unavailable(error)) => {
            tracing::error!(idempotency_key = %key, %error, "Postgres unavailable; refusing the request");
            return answer(problems::unavailable());
        }
    };

    let handle = IdempotentTransaction::new(tx);
    let mut req = Request::from_parts(request.parts, Either::Right(Full::new(request.body)));
    req.extensions_mut().insert(handle.clone());
    req.extensions_mut()
        .insert(IdempotencyKey::new(key.clone()));
    // An `Err` or a panic drops the transaction: nothing is committed.
    let res = inner.call(req).await?;

    let status = res.status();
    let delivery = res.extensions().get::<Delivery>().copied();
    if not_processed(&res) {
        // Not processed: roll back, so that a retry runs.
        drop(handle);
        return Ok(res.map(ResponseBody::inner));
    }
    let (parts, mut body) = res.into_parts();
    let (bytes, spilled) = match collect(&mut body, &config).await {
        Ok(collected) => collected,
        Err(error) => {
            tracing::warn!(idempotency_key = %key, %error, "the response failed before it was whole; rolled back");
            return answer(problems::rolled_back());
        }
    };
    let outcome = match (spilled, delivery) {
        (true, _) => Completion::NotStored(status),
        (false, Some(delivery)) => Completion::Stored(outcome_unknown(status, delivery)),
        (false, None) => Completion::Stored(StoredResponse::new(
            status,
            stored_headers(&parts.headers, request.request_id.as_ref()),
            bytes.clone(),
        )),
    };
    let Some(tx) = handle.take().await else {
        return answer(problems::rolled_back());
    };
    let record = Completed::new(fingerprint, outcome).encode();
    if let Err(error) = commit(&db, tx, record_key, &record, config.ttl).await {
        tracing::error!(idempotency_key = %key, %error, "the commit failed; nothing was applied");
        return answer(problems::unavailable());
    }
    Ok(Response::from_parts(
        parts,
        if spilled {
            ResponseBody::spill(bytes, body)
        } else {
            ResponseBody::full(bytes)
        },
    ))
}

/// The answer for a key another request's row holds: `409` while it runs,
/// its response once completed, `422` for another payload.
fn answer_theirs<B>(
    record: Record,
    fingerprint: Fingerprint,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody<B>> {
    match record {
        Record::InFlight(holder) if holder.fingerprint() == fingerprint => {
            respond(problems::in_use(), request_id)
        }
        Record::Completed(done) if done.fingerprint() == fingerprint => {
            replay(done.into_outcome(), request_id)
        }
        _ => respond(problems::mismatch(), request_id),
    }
}

/// Reads `body` until its end or past `max_response`: what was read, and
/// whether it went past (the rest is still in `body`, to stream on). An
/// error when the body broke off.
async fn collect<B>(body: &mut B, config: &Config) -> Result<(Bytes, bool), BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = Buffer::Empty;
    let mut spilled = config.too_big_to_store(body.size_hint().lower());
    while !spilled {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.push(data);
                    spilled = config.too_big_to_store(buf.len() as u64);
                }
            }
            Some(Err(error)) => return Err(error.into()),
        }
    }
    Ok((buf.freeze(), spilled))
}

/// How the claim went.
enum Claimed {
    /// The key's row is ours, in this open transaction.
    Ours(Transaction<'static, Postgres>),
    /// Another request's row: its claim or its record.
    Theirs(Record),
}

/// Why there is no claim.
enum Refused {
    /// Another transaction holds the key past `lock_wait`.
    Busy,
    /// The database did not answer.
    Unavailable(String),
}

/// Opens the transaction and claims the key in it (see [`CLAIM`]).
async fn claim(
    db: &Transactional,
    config: &Config,
    key: &RecordKey,
    fingerprint: Fingerprint,
) -> Result<Claimed, Refused> {
    let wait = u64::try_from(db.lock_wait.as_millis()).unwrap_or(u64::MAX);
    // Only a number is formatted in: nothing a caller sent.
    let begin = sqlx::AssertSqlSafe(format!("BEGIN; SET LOCAL lock_timeout = '{wait}ms'"));
    let mut tx = within(db.timeout, db.pool.begin_with(begin)).await?;
    let marker = Claim::new(FencingToken::new(fastrand::u64(..)), fingerprint).encode();
    let claimed = sqlx::query(CLAIM)
        .bind(key.scope().as_bytes().as_slice())
        .bind(key.key())
        .bind(marker.as_slice())
        .bind(secs(config.ttl))
        .fetch_optional(&mut *tx);
    // The lock wait is bounded by `lock_timeout`; this bounds the rest.
    let claimed = within(db.timeout + db.lock_wait, claimed).await?;
    if claimed.is_some() {
        return Ok(Claimed::Ours(tx));
    }
    let held = sqlx::query(READ)
        .bind(key.scope().as_bytes().as_slice())
        .bind(key.key())
        .fetch_optional(&mut *tx);
    let held = within(db.timeout, held).await?;
    let Some(row) = held else {
        // Expired or deleted between the two statements: ask again later.
        return Err(Refused::Busy);
    };
    let value: Vec<u8> = row
        .try_get("value")
        .map_err(|e| Refused::Unavailable(redacted(e)))?;
    Record::decode(&value)
        .map(Claimed::Theirs)
        .map_err(|e| Refused::Unavailable(format!("malformed record: {e}")))
}

/// Writes the record into the claimed row and commits, within the timeout.
async fn commit(
    db: &Transactional,
    mut tx: Transaction<'static, Postgres>,
    key: &RecordKey,
    record: &[u8],
    ttl: Duration,
) -> Result<(), String> {
    let write = sqlx::query(RECORD)
        .bind(key.scope().as_bytes().as_slice())
        .bind(key.key())
        .bind(record)
        .bind(secs(ttl))
        .execute(&mut *tx);
    let written = within(db.timeout, write)
        .await
        .map_err(Refused::into_message)?;
    if written.rows_affected() != 1 {
        return Err("the claimed row was gone".to_owned());
    }
    within(db.timeout, tx.commit())
        .await
        .map_err(Refused::into_message)
}

impl Refused {
    fn into_message(self) -> String {
        match self {
            Refused::Busy => "lock timeout".to_owned(),
            Refused::Unavailable(message) => message,
        }
    }
}

/// Runs a database future within `limit`; a lock timeout is [`Refused::Busy`].
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Refused> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(sqlx::Error::Database(db))) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            Err(Refused::Busy)
        }
        Ok(Err(e)) => Err(Refused::Unavailable(redacted(e))),
        Err(_) => Err(Refused::Unavailable("timed out".to_owned())),
    }
}
