//! The history of attempts behind one logical request.

use std::time::Duration;

use http::StatusCode;

use crate::ErrorKind;

/// What one attempt of a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The server answered with this status.
    Status(StatusCode),
    /// No response; the error was of this kind (always [`ErrorKind::Network`] today).
    /// The request may have reached the server.
    Failed(ErrorKind),
    /// No response, and the request never left this host (connect, DNS,
    /// TLS): the server cannot have seen it.
    NotSent,
}

/// One attempt of a logical request, as the retry layer recorded it.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use kneo_core::{Attempt, AttemptOutcome};
///
/// let a = Attempt::new(2, AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE), Duration::from_millis(200));
/// assert_eq!(a.number, 2);
/// assert_eq!(a.wait_before, Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The status or error the attempt ended with.
    pub outcome: AttemptOutcome,
    /// How long the retry layer waited before sending this attempt (zero for the first).
    pub wait_before: Duration,
    /// The request id of this attempt: the server's echo when it sent one, else the id sent.
    pub request_id: Option<String>,
}

impl Attempt {
    /// Records one attempt.
    pub fn new(number: u32, outcome: AttemptOutcome, wait_before: Duration) -> Self {
        Attempt {
            number,
            outcome,
            wait_before,
            request_id: None,
        }
    }

    /// Sets the request id this attempt carried.
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }
}
