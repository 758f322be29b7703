//! kneo's error model: one typed [`Error`] for every way an HTTP API call can fail.
//!
//! Callers `match` on [`Error::kind`], the way a Python client branches with an
//! `except` chain, and read the context (status, server code, body, request
//! id, idempotency key, `Retry-After`) through accessors:
//!
//! ```
//! use std::time::Duration;
//! use http::{Method, Response, StatusCode};
//! use kneo_core::{Error, ErrorKind, Sent};
//!
//! fn what_to_do(err: &Error) -> String {
//!     match err.kind() {
//!         ErrorKind::Auth => "API key is missing, invalid, or revoked.".to_owned(),
//!         ErrorKind::NotFound => "run does not exist.".to_owned(),
//!         ErrorKind::RateLimited => {
//!             let wait = err.retry_after().unwrap_or(Duration::from_secs(10));
//!             format!("rate-limited; server suggests waiting {}s", wait.as_secs())
//!         }
//!         ErrorKind::Server => format!("platform 5xx (after retries): {}", err.message()),
//!         ErrorKind::Network => format!("could not reach the platform: {err}"),
//!         _ => format!("unexpected error: {err}"),
//!     }
//! }
//!
//! // A 429 as the server sent it, mapped the way kneo's MapErrorLayer does.
//! let (parts, ()) = Response::builder()
//!     .status(StatusCode::TOO_MANY_REQUESTS)
//!     .header("retry-after", "7")
//!     .header("x-request-id", "req-42")
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! let body = br#"{"error":{"code":"rate_limit_exceeded","message":"slow down"}}"#;
//! let err = Error::from_response(&parts, body, false, Sent::new(Method::GET));
//!
//! assert_eq!(err.kind(), ErrorKind::RateLimited);
//! assert_eq!(err.code(), "rate_limit_exceeded");
//! assert_eq!(err.request_id(), Some("req-42"));
//! assert_eq!(what_to_do(&err), "rate-limited; server suggests waiting 7s");
//! assert_eq!(
//!     err.to_string(),
//!     "HTTP 429 Too Many Requests: slow down (code=rate_limit_exceeded, request_id=req-42, retry_after=7.00s)"
//! );
//!
//! // A transport failure is a Network error with the cause as its source.
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! let err = Error::network(refused, Sent::new(Method::GET));
//! assert_eq!(err.kind(), ErrorKind::Network);
//! assert!(err.is_connect());
//! assert!(what_to_do(&err).starts_with("could not reach the platform"));
//! ```
//!
//! This crate has no async code and no tower: it is the vocabulary that the
//! `kneo` middleware crate speaks.

mod attempt;
mod body;
mod classify;
pub mod codes;
pub mod credential;
pub mod delivery;
mod error;
mod header;
mod kind;
pub mod mapping;
pub mod problem;
pub mod rate_limit;
pub mod retry_after;
pub mod retry_rule;
mod sent;
mod text;

pub use attempt::{Attempt, AttemptOutcome};
pub use body::{ErrorBody, DEFAULT_BODY_CAP};
pub use delivery::Delivery;
pub use error::{BoxError, Error, TimedOut};
pub use header::{IDEMPOTENCY_KEY, X_ERROR_CODE, X_REQUEST_ID, X_SHOULD_RETRY};
pub use kind::ErrorKind;
pub use mapping::{is_conditional, is_success, is_success_for, should_retry_advice};
pub use problem::{Problem, PROBLEM_JSON};
pub use rate_limit::RateLimit;
pub use sent::{is_idempotent, is_valid_request_id, Sent};

/// `get_ref`, `get_mut` and `into_inner` for a middleware service whose
/// inner service is the field `inner` (tower-http's macro of the same name),
/// for the middleware of kneo and kneo-server. Not part of kneo-core's API.
#[doc(hidden)]
#[macro_export]
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// `Result<T, kneo_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
