//! What the idempotency layers answer by themselves: replays, problems,
//! the headers a record keeps, and which statuses free a key. Shared by
//! [`Idempotency`](super::Idempotency) and the transactional layer.

use std::time::Duration;

use bytes::Bytes;
use http::header::TRAILER;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use kneo_core::delivery::is_not_processed;
use kneo_core::{codes, is_valid_request_id, Delivery, X_REQUEST_ID, X_SHOULD_RETRY};

use super::future::ResponseBody;
use crate::record::key::KeyError;
use crate::record::{Completion, StoredResponse};
use kneo_core::problem::{ProblemResponse, ProblemType};

/// `Idempotent-Replayed: true` marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `Original-Request: <id>` on a replay: the request id of the request whose
/// response it is (Stripe's header of the same name). The replay's own
/// `X-Request-ID` is the retry's.
pub const ORIGINAL_REQUEST: HeaderName = HeaderName::from_static("original-request");

/// How long a caller is told to wait before retrying a 409 or 503.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The request's `X-Request-ID`, when it has a valid one.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .cloned()
}

/// A problem answer, carrying the request's id.
pub(crate) fn respond<B>(
    problem: ProblemResponse,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody<B>> {
    match request_id.and_then(|id| id.to_str().ok()) {
        Some(id) => problem.request_id(id).to_response(),
        None => problem.to_response(),
    }
}

/// The one rule for what frees a key: the response says the request was not
/// processed. A `429` or `503` says so; so does a gateway below that never
/// sent it ([`Delivery::NotSent`] in the extensions).
pub(crate) fn not_processed<B>(res: &Response<B>) -> bool {
    is_not_processed(res.status()) || res.extensions().get::<Delivery>() == Some(&Delivery::NotSent)
}

/// The headers kept for replays: all but `Trailer` (trailers are not
/// stored), with an `X-Request-ID` that echoes the request's own kept as
/// `Original-Request` (a replay answers with the retry's id). An id the
/// handler set itself is part of its answer and is kept as it is.
pub(crate) fn stored_headers(
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
pub(crate) fn outcome_unknown(status: StatusCode, delivery: Delivery) -> StoredResponse {
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

/// The stored response, replayed with this request's id; or the problem
/// saying there is none.
pub(crate) fn replay<B>(
    outcome: Completion,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody<B>> {
    match outcome {
        Completion::Stored(stored) => {
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
        Completion::NotStored(_) => respond(problems::not_stored(), request_id),
    }
}

/// The problems this layer answers with.
pub(crate) mod problems {
    use super::*;

    pub(crate) fn missing() -> ProblemResponse {
        ProblemResponse::new(StatusCode::BAD_REQUEST, codes::IDEMPOTENCY_KEY_MISSING)
            .problem_type(ProblemType::IDEMPOTENCY_KEY_MISSING)
            .detail("This request must carry an Idempotency-Key header.")
    }

    pub(crate) fn invalid(e: KeyError) -> ProblemResponse {
        ProblemResponse::new(StatusCode::BAD_REQUEST, codes::IDEMPOTENCY_KEY_INVALID)
            .problem_type(ProblemType::IDEMPOTENCY_KEY_INVALID)
            .detail(e.detail())
    }

    pub(crate) fn too_large(max: usize) -> ProblemResponse {
        ProblemResponse::new(StatusCode::PAYLOAD_TOO_LARGE, codes::REQUEST_BODY_TOO_LARGE)
            .problem_type(ProblemType::REQUEST_BODY_TOO_LARGE)
            .detail(format!(
                "A request with an Idempotency-Key may have a body of at most {max} bytes."
            ))
    }

    pub(crate) fn unreadable() -> ProblemResponse {
        ProblemResponse::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST)
            .problem_type(ProblemType::BAD_REQUEST)
            .detail("The request body could not be read.")
    }

    pub(crate) fn in_use() -> ProblemResponse {
        ProblemResponse::new(StatusCode::CONFLICT, codes::IDEMPOTENCY_KEY_IN_USE)
            .problem_type(ProblemType::IDEMPOTENCY_KEY_IN_USE)
            .detail("A request with this Idempotency-Key is still being processed; retry later.")
            .retry_after(RETRY_AFTER)
    }

    pub(crate) fn mismatch() -> ProblemResponse {
        ProblemResponse::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::IDEMPOTENCY_KEY_MISMATCH,
        )
        .problem_type(ProblemType::IDEMPOTENCY_KEY_MISMATCH)
        .detail(
            "This Idempotency-Key was used with a different request (method, path, query, media type or body).",
        )
    }

    pub(crate) fn not_stored() -> ProblemResponse {
        ProblemResponse::new(StatusCode::GONE, codes::IDEMPOTENCY_RESPONSE_NOT_STORED)
            .problem_type(ProblemType::RESPONSE_NOT_STORED)
            .detail(
                "The request with this Idempotency-Key was processed, but its response was not kept (too large, cut off, or the handler failed); it will not be run again.",
            )
    }

    pub(crate) fn outcome_unknown(status: StatusCode, delivery: Delivery) -> ProblemResponse {
        let detail = match delivery {
            Delivery::TimedOut => "The upstream did not answer in time, so this request may have been applied; it will not be sent again under this Idempotency-Key.",
            _ => "The connection to the upstream broke before its answer arrived, so this request may have been applied; it will not be sent again under this Idempotency-Key.",
        };
        ProblemResponse::new(status, codes::UPSTREAM_OUTCOME_UNKNOWN)
            .problem_type(ProblemType::UPSTREAM_OUTCOME_UNKNOWN)
            .detail(detail)
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn rolled_back() -> ProblemResponse {
        ProblemResponse::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::IDEMPOTENCY_STORE_UNAVAILABLE,
        )
        .problem_type(ProblemType::ROLLED_BACK)
        .detail(
            "The response failed before it was complete, so nothing was committed; retry later.",
        )
        .retry_after(RETRY_AFTER)
    }

    pub(crate) fn interrupted() -> ProblemResponse {
        ProblemResponse::new(StatusCode::INTERNAL_SERVER_ERROR, codes::SERVER_ERROR)
            .problem_type(ProblemType::INTERRUPTED)
            .detail("The server stopped while the request ran; it may have been applied. Retry with the same Idempotency-Key to learn its outcome.")
    }

    pub(crate) fn unavailable() -> ProblemResponse {
        ProblemResponse::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::IDEMPOTENCY_STORE_UNAVAILABLE,
        )
        .problem_type(ProblemType::STORE_UNAVAILABLE)
        .detail("The request was not processed; retry later.")
        .retry_after(RETRY_AFTER)
    }
}
