//! What an answered request was: its [`ExchangeOutcome`], and the [`Exchange`] an
//! access log sees, handed to the [`ExchangeHook`] once per answer.

use std::time::Duration;

use http::{Method, StatusCode};

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExchangeOutcome {
    /// The upstream's answer, passed on (whatever its status).
    Upstream,
    /// A `502` problem: the upstream could not be reached or hung up.
    Unreachable,
    /// A `504` problem: the per-attempt timeout or the deadline ran out.
    Timeout,
    /// A `503` problem: the proxy is at `max_connections`.
    Overloaded,
    /// A `400` problem: the request could not be forwarded.
    BadRequest,
    /// A `429` problem: the upstream's rate-limit headers said nothing is
    /// left until a reset further away than `--max-retry-after`; not sent.
    RateLimited,
    /// A stored answer replayed by the layer in front of the proxy (the
    /// response says `Idempotent-Replayed: true`); not sent.
    Replayed,
    /// Any other answer the layer in front made by itself: the idempotency
    /// layer's problems (`400`, `409`, `410`, `413`, `422`, and the `503`
    /// when its store is unavailable); not sent.
    Idempotency,
}

impl ExchangeOutcome {
    /// Every outcome, in declaration order.
    pub(crate) const ALL: [ExchangeOutcome; 8] = [
        ExchangeOutcome::Upstream,
        ExchangeOutcome::Unreachable,
        ExchangeOutcome::Timeout,
        ExchangeOutcome::Overloaded,
        ExchangeOutcome::BadRequest,
        ExchangeOutcome::RateLimited,
        ExchangeOutcome::Replayed,
        ExchangeOutcome::Idempotency,
    ];

    /// The outcome as a stable snake_case string (`upstream`, `unreachable`...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeOutcome::Upstream => "upstream",
            ExchangeOutcome::Unreachable => "unreachable",
            ExchangeOutcome::Timeout => "timeout",
            ExchangeOutcome::Overloaded => "overloaded",
            ExchangeOutcome::BadRequest => "bad_request",
            ExchangeOutcome::RateLimited => "rate_limited",
            ExchangeOutcome::Replayed => "replayed",
            ExchangeOutcome::Idempotency => "idempotency",
        }
    }
}

/// One answered request, as an access log sees it; handed to the
/// [`ExchangeHook`] given to [`Proxy::new`](crate::Proxy::new) once the response head is ready.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub(crate) request_id: Option<&'a str>,
    pub(crate) upstream_request_id: Option<&'a str>,
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    pub(crate) attempts: u32,
    pub(crate) upstream_time: Duration,
    pub(crate) outcome: ExchangeOutcome,
}

impl Exchange<'_> {
    /// This request's id: the caller's valid `X-Request-ID`, else the one
    /// the proxy made; the id sent upstream, and the one the caller's answer
    /// carries unless the upstream set its own.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id
    }

    /// The upstream's own request id: the `X-Request-ID` of the answer when
    /// it is not the [one sent](Self::request_id) (OpenAI answers
    /// `x-request-id: req_…`, say), and a valid id (1–128 visible ASCII
    /// characters). For a replay, the one the stored answer carries. The
    /// caller gets the header unchanged either way.
    pub fn upstream_request_id(&self) -> Option<&str> {
        self.upstream_request_id
    }

    /// The method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The request path, without the query (which may carry keys).
    pub fn path(&self) -> &str {
        self.path
    }

    /// The status the caller got.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Requests sent upstream for this one (0 when none was: a problem the
    /// proxy made before sending, a replay, the idempotency layer's answers).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// From the request's arrival to the response head: attempts and waits
    /// (and, behind the idempotency layer, its store round trips).
    pub fn upstream_time(&self) -> Duration {
        self.upstream_time
    }

    /// How it was answered.
    pub fn outcome(&self) -> ExchangeOutcome {
        self.outcome
    }
}

/// What [`Proxy::new`](crate::Proxy::new) tells about every answered
/// request: an access log, say. A closure `Fn(&Exchange<'_>)` is one.
///
/// [`serve`](crate::serve) and [`Workers`](crate::Workers) call
/// [`flush`](Self::flush) every [`FLUSH_EVERY`] from each serving runtime and
/// once more when it has drained. On a thread-per-core worker that is the
/// thread every [`record`](Self::record) of the worker ran on, so a log may
/// buffer per thread (as `kneo proxy`'s does) and write on `flush`.
pub trait ExchangeLog: Send + Sync {
    /// One answered request, once its response head is ready.
    fn record(&self, exchange: &Exchange<'_>);

    /// Writes out what [`record`](Self::record) buffered on this thread.
    fn flush(&self) {}
}

impl<F> ExchangeLog for F
where
    F: Fn(&Exchange<'_>) + Send + Sync,
{
    fn record(&self, exchange: &Exchange<'_>) {
        self(exchange);
    }
}

/// How often a serving runtime calls [`ExchangeLog::flush`].
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The hook [`Proxy::new`](crate::Proxy::new) takes.
pub type ExchangeHook = Box<dyn ExchangeLog>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_distinct() {
        let mut names: Vec<_> = ExchangeOutcome::ALL.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ExchangeOutcome::ALL.len());
        for (i, outcome) in ExchangeOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "ALL is in declaration order");
        }
    }
}
