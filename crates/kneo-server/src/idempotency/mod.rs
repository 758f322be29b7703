//! Server-side `Idempotency-Key` enforcement
//! ([draft-ietf-httpapi-idempotency-key-header], with Stripe's semantics).
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use kneo_server::{IdempotencyLayer, MemoryStore};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let handler = service_fn(|_req: Request<_>| async {
//!     Ok::<_, Infallible>(Response::builder().status(201).body(Full::new(Bytes::from("created"))).unwrap())
//! });
//! let svc = IdempotencyLayer::new(MemoryStore::new()).layer(handler);
//! let post = |body: &'static str| {
//!     Request::post("/payments").header("idempotency-key", "\"pay-1\"").body(Full::new(Bytes::from(body))).unwrap()
//! };
//!
//! assert_eq!(svc.clone().oneshot(post("10 EUR")).await.unwrap().status(), StatusCode::CREATED);
//! // The same key and request: replayed.
//! let replay = svc.clone().oneshot(post("10 EUR")).await.unwrap();
//! assert_eq!(replay.status(), StatusCode::CREATED);
//! assert_eq!(replay.headers()["idempotent-replayed"], "true");
//! // The same key, another body: refused.
//! let reused = svc.clone().oneshot(post("99 EUR")).await.unwrap();
//! assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
//! assert_eq!(reused.headers()["content-type"], "application/problem+json");
//! let problem = reused.into_body().collect().await.unwrap().to_bytes();
//! assert!(std::str::from_utf8(&problem).unwrap().contains(r#""code":"idempotency_key_mismatch""#));
//! # }
//! ```
//!
//! # Where it goes
//!
//! Inside authentication (the default scope, [`CredentialScope`], is a keyed
//! hash of the request's `Authorization`, `Proxy-Authorization`, `X-Api-Key`
//! and `Api-Key` values, and of the cookies you name, so only authenticated
//! callers should reach it; give it your deployment's
//! [secret](CredentialScope::secret) when the store is shared) and inside
//! request-id, tracing and CORS layers, whose headers are per attempt; around
//! the routes that create things. With axum: `Router::new().route(..).layer(IdempotencyLayer::new(store))`.
//! Everything the handler puts in the response, headers included, is stored
//! and replayed.
//!
//! The inner service receives a [`RequestBody`]: the original body when the
//! layer lets the request through, the buffered bytes when it read them to
//! fingerprint the request (axum routes accept any body). The inner service's
//! response body must be `Unpin` (axum's `Body`, hyper's and
//! `http-body-util`'s bodies are), so that a response too big to store can
//! be streamed on after its first megabyte.
//!
//! # What it guarantees
//!
//! For requests of the configured methods (POST and PATCH by default) that
//! carry an `Idempotency-Key`:
//!
//! - the handler runs **at most once per (scope, key)** while the record lives
//!   (24 h by default), across every server sharing the store;
//! - **a started request runs to completion.** Once a request has claimed its
//!   key, its handler, the reading of its response and the record run on a
//!   task of their own: a caller that hangs up (a client timeout, a closed
//!   tab) cancels none of it. A retry while it runs gets `409`, the one after
//!   it the replay;
//! - **the claim lives as long as the work.** The layer renews it every third
//!   of the lease (60 s by default) while the work runs, for up to
//!   [`max_hold`](IdempotencyLayer::max_hold) (15 min). So only a process that
//!   crashed, or work that outlived `max_hold`, lets a lease end and a retry
//!   run the request again;
//! - a retry with the same method, path, query and body gets the first
//!   response back byte for byte, with `Idempotent-Replayed: true`, its own
//!   `X-Request-ID`, and the first request's id as [`Original-Request`](ORIGINAL_REQUEST)
//!   (when the first response's `X-Request-ID` echoed its request's; an id
//!   the handler made itself is part of its answer and stays);
//! - the handler never runs without a claim (unless built with
//!   [`fail_open`](IdempotencyLayer::fail_open), which opens only when the
//!   store cannot be reached);
//! - a response the store could not keep when the work finished (the store
//!   was down) is stored again in the background, with backoff, for as long
//!   as the lease lasts; until it lands, retries get `409`. A store outage
//!   longer than the lease, or a server killed between the handler's work and
//!   the store's record, is the one way a retry can run again: the record is
//!   not the handler's own transaction. (A Redis restart keeps the records
//!   only as far as Redis persists them: an append-only file with
//!   `appendfsync always` keeps every acknowledged one.)
//!
//! Requests of other methods, and requests without a key (unless
//! [`require`](IdempotencyLayer::require)d), pass through untouched.
//!
//! | situation | response | code | kneo's client sees |
//! |---|---|---|---|
//! | first request | the handler's | | |
//! | retry after completion | the stored one, `Idempotent-Replayed: true` | | |
//! | retry while the first still runs | `409`, `Retry-After: 1` | `idempotency_key_in_use` | `Conflict`, retried |
//! | same key, another request | `422` | `idempotency_key_mismatch` | `IdempotencyMismatch` |
//! | response was too big to store | `410` | `idempotency_response_not_stored` | `Status`, not retried |
//! | no key, with `.require()` | `400` | `idempotency_key_missing` | `Status` |
//! | two keys, empty, > 255 chars, not visible ASCII | `400` | `idempotency_key_invalid` | `Status` |
//! | body over `max_body` (1 MiB) | `413` | `request_body_too_large` | `Status` |
//! | store down or full of claims | `503`, `Retry-After: 1` | `idempotency_store_unavailable` | `Server`, retried |
//!
//! The key is accepted as a structured-field string (`"8e03…"`) or bare
//! (`8e03…`), 1 to 255 visible ASCII characters after unquoting.
//!
//! # What is stored, and what frees a key
//!
//! A key is given back (its claim released, so a retry runs) **only when
//! nothing can have happened**: the request was refused before its handler
//! began, the handler answered `429` or `503` (which say the request was not
//! processed), or a gateway below says the request never left
//! ([`Delivery::NotSent`](kneo_core::Delivery) in the response's
//! extensions: kneo proxy's "could not connect" `502`). Everything else is
//! *maybe applied* and keeps the key:
//!
//! | what the work came to | recorded | a retry gets |
//! |---|---|---|
//! | a response (any status but 429/503), read to its end | the response (trailers and the `Trailer` header are not stored) | the replay |
//! | a response body over `max_response` (1 MiB) | that it was not stored | `410` `idempotency_response_not_stored` |
//! | a response whose body broke off after its head | that it was not stored (the caller got the head and what arrived, then the error, as without a key) | `410` |
//! | the handler returned `Err` or panicked (the caller's connection closes) | that it was not stored | `410` |
//! | a gateway sent it and lost the answer ([`Delivery::Unknown`](kneo_core::Delivery) or `TimedOut`: kneo proxy's `502` after a cut, `504` after a timeout) | a problem with code [`upstream_outcome_unknown`](kneo_core::codes::UPSTREAM_OUTCOME_UNKNOWN), the status the caller got and `x-should-retry: false`: never the gateway's answer dressed as the upstream's | that problem |
//!
//! # Streams
//!
//! A response reaches its caller as the handler produces it (an SSE stream,
//! a long download), frame by frame, while the layer records it up to
//! `max_response`; its exact length, when known, is kept as the response's
//! size. The caller's body ends only once the record is kept, so a caller
//! that read its response to the end and retries finds the replay.
//!
//! # Why a box and a task
//!
//! A keyed request awaits the store, buffers the request body, then hands
//! the rest to a spawned task (the handler, the response, the store again)
//! so that a hang-up cannot cancel it, and waits for the response head. The
//! waiting is one `async fn`, boxed once per keyed request
//! ([`ResponseFuture`] is otherwise a named `pin_project` type, and requests
//! the layer does not handle are neither boxed nor spawned). Next to the
//! store round trips neither shows in the benchmark.
//!
//! [draft-ietf-httpapi-idempotency-key-header]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/

pub(crate) mod answer;
pub(crate) mod body;
mod child;
pub(crate) mod config;
mod future;
mod guard;
pub(crate) mod layer;
pub(crate) mod request;
pub(crate) mod service;

pub use crate::record::{
    Claim, Completed, Completion, CredentialScope, DecodeError, FencingToken, Fingerprint,
    MakeScope, Record, RecordKey, Scope, StoredResponse, DEFAULT_SCOPE_SECRET, MAX_KEY_LEN,
};
pub use answer::{IDEMPOTENT_REPLAYED, ORIGINAL_REQUEST};
pub use child::IdempotencyKey;
pub use config::{
    DEFAULT_LEASE, DEFAULT_MAX_BODY, DEFAULT_MAX_HOLD, DEFAULT_MAX_RESPONSE, DEFAULT_TTL,
    MAX_DURATION, MIN_LEASE,
};
pub use future::{ResponseBody, ResponseFuture};
pub use layer::IdempotencyLayer;
pub use service::{Idempotency, RequestBody};

/// Not public API: the header parsing the fuzz targets in `fuzz/` exercise.
/// No semver guarantee; do not call it.
#[doc(hidden)]
pub mod __fuzz {
    use std::sync::Arc;

    use http::HeaderMap;

    /// The request's `Idempotency-Key`, as the layer reads it: `Ok(None)`
    /// when absent, `Err` with the problem's detail when refused.
    pub fn parse_key(headers: &HeaderMap) -> Result<Option<Arc<str>>, &'static str> {
        crate::record::key::parse(headers).map_err(crate::record::key::KeyError::detail)
    }
}
