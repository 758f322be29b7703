//! kneo: tower middleware that gives every HTTP API client one honest, typed way to fail.
//!
//! Five [`Layer`](tower_layer::Layer)s, usable alone or together:
//!
//! | layer | what it does |
//! |---|---|
//! | [`request_id`] | stamps `X-Request-ID` (keeping a well-formed caller id), the same on every attempt |
//! | [`idempotency`] | stamps `Idempotency-Key` on POST and PATCH, never overwriting the caller's |
//! | [`throttle`] | waits for an upstream's announced rate-limit reset before sending, per authority and credential |
//! | [`retry`] | tower `Retry` with a policy that honours `Retry-After`, backs off with jitter, and never re-sends what may have been applied |
//! | [`map_error`] | turns every failure into one [`Error`] whose [`kind()`](Error::kind) says what went wrong |
//!
//! [`ClientLayer`] stacks all five in the right order; [`ServiceBuilderExt`]
//! adds them one by one so your own layers fit in between; [`Client`] (feature
//! `client`) is a ready hyper-util client under the stack, over
//! [`transport::connector`].
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use kneo::{ClientLayer, ErrorKind};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = service_fn(|_req: Request<_>| async {
//!     let res = Response::builder()
//!         .status(StatusCode::UNAUTHORIZED)
//!         .body(Full::new(Bytes::from_static(br#"{"error":{"message":"key revoked"}}"#)))
//!         .unwrap();
//!     Ok::<_, Infallible>(res)
//! });
//! let client = ClientLayer::new().layer(upstream);
//!
//! let err = client.oneshot(Request::get("/runs").body(Full::new(Bytes::new())).unwrap()).await.unwrap_err();
//! match err.kind() {
//!     ErrorKind::Auth => assert_eq!(err.message(), "key revoked"),
//!     other => panic!("unexpected {other}"),
//! }
//! assert!(err.request_id().is_some(), "the id the request was sent with");
//! # }
//! ```

mod body;
mod builder;
mod deadline;
mod extension;
mod id;
pub mod idempotency;
mod identity;
pub mod map_error;
mod partition;
mod request;
pub mod request_id;
pub mod retry;
mod stack;
pub mod throttle;
mod trace;
pub mod transport;
mod url;

#[cfg(feature = "client")]
pub mod client;

pub use builder::ServiceBuilderExt;
pub use kneo_core::{
    codes, credential, rate_limit, retry_after, Attempt, AttemptOutcome, BoxError, Error,
    ErrorBody, ErrorKind, Problem, RateLimit, Result, Sent,
};
pub use retry::Attempts;
pub use stack::ClientLayer;

#[cfg(feature = "client")]
pub use client::{Client, ClientBuilder};

/// kneo-core, for what this crate does not re-export.
pub use kneo_core as core;

/// The README's code blocks, compiled as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
