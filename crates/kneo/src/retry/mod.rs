//! Retry failed attempts the way the server asks: a kneo [`RetryPolicy`],
//! which is a `tower::retry::Policy`, driven by kneo's [`Retry`] (or by tower's
//! own `Retry`: see [`RetryLayer::policy`]).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use kneo::map_error::MapErrorLayer;
//! use kneo::retry::{Backoff, RetryLayer};
//! use kneo::Attempts;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream that answers 503 twice, then 200.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = {
//!     let calls = calls.clone();
//!     service_fn(move |_req: Request<_>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!             Ok::<_, Infallible>(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
//!         }
//!     })
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new().backoff(Backoff::new().base(Duration::from_millis(1))))
//!     .layer(MapErrorLayer::new())
//!     .service(upstream);
//!
//! let res = svc.oneshot(Request::get("/").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.extensions().get::<Attempts>().unwrap().count(), 3);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```
//!
//! # Where it goes
//!
//! Below the [request id](crate::request_id) and
//! [idempotency key](crate::idempotency) layers (so every attempt carries the
//! same id and key) and above the [error mapping](crate::map_error) layer (so
//! it decides on a typed [`Error`](crate::Error)). Without the mapping layer
//! below it still retries by status, reading the response headers.
//!
//! # What it retries
//!
//! - Transport failures where the request never left (connect, DNS, TLS):
//!   always.
//! - Failures after the request may have been sent (reset, incomplete
//!   response, a per-attempt timeout): only when the method is idempotent
//!   (RFC 9110 §9.2.2) or the request carries an `Idempotency-Key`.
//! - 429, 502, 503 and 504 by default (500 is off). A request that may have
//!   been applied (not idempotent, no key) is retried only on 429 and 503,
//!   which say it was not processed. An `x-should-retry: true|false` header
//!   overrides the status rule.
//! - A 409 whose code is `idempotency_key_in_use` (the original is still in flight).
//! - Never an idempotency-key mismatch or any other 4xx.
//!
//! # How long it waits
//!
//! The server's `Retry-After` (or `retry-after-ms`) is the minimum wait. A
//! hint above `max_retry_after` (60 s by default), or one that would pass the
//! deadline, ends retrying at once: the error comes back with
//! [`retry_after()`](crate::Error::retry_after) set, and no one sleeps
//! silently for minutes. Without a hint: exponential [`Backoff`] with full
//! jitter.
//!
//! # Why a budget as well as max attempts?
//!
//! `max_attempts` bounds one request; when an upstream is down, every request
//! retries and the upstream sees `max_attempts` times its normal load just
//! when it can least take it. A budget bounds the retries of all requests
//! together, so a failing upstream sees bounded amplification.
//!
//! The default is a [`RetryQuota`]: a cost-weighted token bucket per
//! authority (500 tokens; a retry costs 10 after no response, 5 after a
//! status, 1 when the server asked with `Retry-After`; a success refunds).
//! It stays full while failures are occasional and empties in a storm,
//! where a ratio budget also cuts retries when failures are merely common.
//! [`RetryLayer::budget`] adds a ratio budget on top: [`RatioBudget`]
//! (exact for fractional ratios, which tower's `TpsBudget` is not) or any
//! tower `Budget`; [`RetryLayer::no_budget`] removes both.
//!
//! # Bodies
//!
//! Request bodies are wrapped in a [`ReplayBody`], which records up to
//! `replay_cap` bytes (64 KiB) as they are first sent. A larger or endless
//! body is sent once and simply not retried.
//!
//! # What it records
//!
//! Every attempt (status or error kind, request id, wait before it): a final
//! error has them in [`Error::history`](crate::Error::history), a successful
//! response carries [`Attempts`] in its extensions. Each retry logs at INFO,
//! target `kneo::retry`: `attempt 1 failed (503 Service Unavailable); retrying
//! in 0.20s`, with the request id and attempt number as fields.

mod backoff;
mod body;
mod layer;
mod policy;
mod quota;
mod ratio;
mod timeout;

pub use backoff::Backoff;
pub use body::ReplayBody;
pub use layer::{ResponseFuture, Retry, RetryLayer};
pub use policy::{Attempts, RetryPolicy};
pub use quota::RetryQuota;
pub use ratio::RatioBudget;
pub use timeout::{AttemptTimeout, TimeoutFuture};
pub use tower::retry::budget::{Budget, TpsBudget};
