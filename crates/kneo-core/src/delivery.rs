//! The one outcome rule for answers a gateway makes itself: when no response
//! came back, could the request have been applied?
//!
//! The [retry rule](crate::retry_rule) decides whether to send a failed
//! request again; this rule decides what a failure *means* to whoever keeps
//! records of requests, above all an idempotency layer in front of a gateway
//! (`kneo proxy --idempotency`, kneo-server's `IdempotencyLayer`). It has
//! three answers, and only the first one frees an idempotency key:
//!
//! | [`Delivery`] | when | what a record keeper does |
//! |---|---|---|
//! | [`NotSent`](Delivery::NotSent) | no attempt left this host: connection refused, DNS, TLS before the request was written, or refused locally (a spent rate limit) | release the key: the request was not processed |
//! | [`TimedOut`](Delivery::TimedOut) | the last attempt was sent and its timer ran out | the request may still be running upstream: never release; keep the key until its real answer is known, or record that it is unknown |
//! | [`Unknown`](Delivery::Unknown) | an attempt was sent and the connection was cut with no answer | never release (a re-send could apply it twice); record that the outcome is unknown ([`UPSTREAM_OUTCOME_UNKNOWN`](crate::codes::UPSTREAM_OUTCOME_UNKNOWN)), never dressed as the upstream's answer |
//!
//! A response can say the same: `429 Too Many Requests` and `503 Service
//! Unavailable` mean the server did not process the request
//! ([`is_not_processed`]); no other status does. The retry rule re-sends a
//! request that may have been applied only on those, and an idempotency
//! layer frees a key only on those (or on `NotSent`).
//!
//! Every attempt counts: a request whose first attempt timed out and whose
//! second could not connect may have been applied by the first.
//!
//! A gateway that answers on the upstream's behalf puts the request's
//! `Delivery` in its response's extensions, so that a layer in front can
//! read it without parsing the problem body (kneo proxy does).
//!
//! # The answer after a timeout
//!
//! A layer that records outcomes can put a [`LateAnswer`] in a request's
//! extensions. A gateway that finds one does not abandon an attempt that
//! timed out after it was sent: the caller gets its `504` at once, the
//! upstream call goes on, and its real answer is handed to the
//! `LateAnswer` (kneo proxy does this). The layer then records that answer
//! instead of "unknown", and a retry gets the upstream's own response.
//!
//! ```
//! use http::Method;
//! use kneo_core::{Delivery, Error, Sent};
//!
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! let err = Error::network(refused, Sent::new(Method::POST));
//! assert_eq!(Delivery::of(&err), Some(Delivery::NotSent));
//!
//! let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
//! let err = Error::network(reset, Sent::new(Method::POST));
//! assert_eq!(Delivery::of(&err), Some(Delivery::Unknown));
//!
//! let err = Error::timeout(std::time::Duration::from_secs(1), Sent::new(Method::POST));
//! assert_eq!(Delivery::of(&err), Some(Delivery::TimedOut));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;

use crate::{attempt, Error, ErrorKind};

pub use crate::classify::is_not_processed;

/// What became of a request that got no response; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// Nothing reached the server: the request was not processed.
    NotSent,
    /// The last attempt was sent and timed out: it may still be running.
    TimedOut,
    /// An attempt was sent and no answer came: it may have been applied.
    Unknown,
}

impl Delivery {
    /// The rule, for an error: `None` when a response arrived (the error
    /// carries its status: that answer is the server's, not a gateway's).
    pub fn of(err: &Error) -> Option<Delivery> {
        if err.status().is_some() {
            return None;
        }
        let never_left = match err.kind() {
            // Refused before sending: a request that could not be built, or
            // a rate limit spent until later than the caller waits.
            ErrorKind::Request | ErrorKind::RateLimited => true,
            _ => err.is_connect(),
        };
        let earlier_sent = err
            .history()
            .iter()
            .any(|a| !matches!(a.outcome, attempt::AttemptOutcome::NotSent));
        Some(if never_left && !earlier_sent {
            Delivery::NotSent
        } else if err.is_timeout() {
            Delivery::TimedOut
        } else {
            Delivery::Unknown
        })
    }

    /// `true` when the request cannot have been applied.
    pub fn is_not_sent(self) -> bool {
        self == Delivery::NotSent
    }

    /// The delivery as a stable snake_case string (`not_sent`, `timed_out`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::NotSent => "not_sent",
            Delivery::TimedOut => "timed_out",
            Delivery::Unknown => "unknown",
        }
    }
}

/// Where a gateway hands the upstream's answer to an attempt that timed
/// out after it was sent; see the [module docs](self#the-answer-after-a-timeout).
///
/// Cloned with the request into every attempt; the first answer delivered
/// is the one kept. The answer's body is whole: `None` when it was larger
/// than [`max_body`](LateAnswer::max_body) bytes (the answer is then known
/// only by its status and headers). A gateway waits for the answer at most
/// [`max_wait`](LateAnswer::max_wait) from the start of the attempt. When
/// every clone is dropped without a delivery, no answer came.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::Response;
/// use kneo_core::delivery::LateAnswer;
///
/// let got = Arc::new(Mutex::new(None));
/// let late = {
///     let got = got.clone();
///     LateAnswer::new(1024, Duration::from_secs(60), move |res: Response<Option<Bytes>>| {
///         got.lock().unwrap().get_or_insert(res.status());
///     })
/// };
/// late.deliver(Response::builder().status(201).body(Some(Bytes::from("done"))).unwrap());
/// assert_eq!(*got.lock().unwrap(), Some(http::StatusCode::CREATED));
/// ```
#[derive(Clone)]
pub struct LateAnswer {
    max_body: usize,
    max_wait: Duration,
    deliver: Arc<dyn Fn(Response<Option<Bytes>>) + Send + Sync>,
}

impl LateAnswer {
    /// A slot whose answers go to `deliver`, with bodies of up to
    /// `max_body` bytes, waited for up to `max_wait`.
    pub fn new(
        max_body: usize,
        max_wait: Duration,
        deliver: impl Fn(Response<Option<Bytes>>) + Send + Sync + 'static,
    ) -> Self {
        LateAnswer {
            max_body,
            max_wait,
            deliver: Arc::new(deliver),
        }
    }

    /// The largest body the recorder keeps.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// How long the recorder waits for the answer.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Hands over the upstream's answer.
    pub fn deliver(&self, answer: Response<Option<Bytes>>) {
        (self.deliver)(answer);
    }
}

impl fmt::Debug for LateAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LateAnswer")
            .field("max_body", &self.max_body)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};

    use super::*;
    use crate::{Attempt, Sent};

    fn refused() -> Error {
        Error::network(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            Sent::new(Method::POST),
        )
    }

    fn history(err: Error, outcomes: &[attempt::AttemptOutcome]) -> Error {
        let history = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| Attempt::new(i as u32 + 1, *o, Duration::ZERO))
            .collect();
        err.with_history(history)
    }

    #[test]
    fn a_connect_failure_after_a_sent_attempt_may_have_been_applied() {
        let err = history(
            refused(),
            &[
                attempt::AttemptOutcome::NotSent,
                attempt::AttemptOutcome::NotSent,
            ],
        );
        assert_eq!(Delivery::of(&err), Some(Delivery::NotSent));

        let err = history(
            refused(),
            &[
                attempt::AttemptOutcome::Failed(ErrorKind::Network),
                attempt::AttemptOutcome::NotSent,
            ],
        );
        assert_eq!(Delivery::of(&err), Some(Delivery::Unknown));

        let err = history(
            refused(),
            &[
                attempt::AttemptOutcome::Status(StatusCode::BAD_GATEWAY),
                attempt::AttemptOutcome::NotSent,
            ],
        );
        assert_eq!(Delivery::of(&err), Some(Delivery::Unknown));
    }

    #[test]
    fn an_answer_is_not_a_delivery_question() {
        let (parts, ()) = http::Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(())
            .expect("valid")
            .into_parts();
        let err = Error::from_response(&parts, b"", false, Sent::new(Method::POST));
        assert_eq!(Delivery::of(&err), None);
    }

    #[test]
    fn refused_locally_was_not_sent() {
        let err = Error::throttled(Duration::from_secs(600), None, Sent::new(Method::POST));
        assert_eq!(Delivery::of(&err), Some(Delivery::NotSent));
        let err = Error::invalid_request("bad header");
        assert_eq!(Delivery::of(&err), Some(Delivery::NotSent));
    }
}
