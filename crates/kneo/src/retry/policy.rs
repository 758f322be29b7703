//! The kneo retry [`Policy`] for tower's `Retry`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use kneo_core::{
    codes, is_idempotent, is_valid_request_id, retry_after, should_retry_advice, Attempt, Error,
    ErrorKind, Outcome, IDEMPOTENCY_KEY,
};
use tokio::time::{Instant, Sleep};
use tower::retry::budget::Budget;
use tower::retry::Policy;

use super::backoff::Backoff;
use super::body::ReplayBody;
use super::timeout::Deadline;
use crate::map_error::SentHeaders;

/// Configuration shared by every request through one retry layer.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_retry_after: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) replay_cap: usize,
    pub(crate) budget: Option<Arc<dyn Budget + Send + Sync>>,
    pub(crate) request_id_header: HeaderName,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_attempts", &self.max_attempts)
            .field("statuses", &self.statuses)
            .field("max_retry_after", &self.max_retry_after)
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("replay_cap", &self.replay_cap)
            .field("budget", &self.budget.as_ref().map(|_| ".."))
            .finish()
    }
}

/// How many attempts a successful response took, in its extensions.
///
/// ```
/// # use kneo::Attempts;
/// fn log_retries<B>(res: &http::Response<B>) {
///     if let Some(a) = res.extensions().get::<Attempts>() {
///         for failed in a.history() {
///             println!("attempt {} failed: {:?}", failed.number, failed.outcome);
///         }
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Attempts {
    count: u32,
    total_wait: Duration,
    history: Vec<Attempt>,
}

impl Attempts {
    /// How many requests went out, this one included.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// How long the retry layer waited between attempts, in all.
    pub fn total_wait(&self) -> Duration {
        self.total_wait
    }

    /// The attempts that failed before this one, oldest first.
    pub fn history(&self) -> &[Attempt] {
        &self.history
    }
}

/// The retry decision for one logical request.
///
/// tower clones the policy for every request (see `tower::retry::Retry`), so
/// the attempt count and history here are per request; the configuration and
/// budget are shared.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    config: Arc<Config>,
    attempt: u32,
    /// The wait before the attempt in flight.
    waited: Duration,
    /// All waits so far, that one included.
    total_wait: Duration,
    history: Vec<Attempt>,
}

/// What one failed attempt says about retrying.
struct Verdict {
    retryable: bool,
    hint: Option<Duration>,
    outcome: Outcome,
    request_id: Option<String>,
}

impl RetryPolicy {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        RetryPolicy {
            config,
            attempt: 0,
            waited: Duration::ZERO,
            total_wait: Duration::ZERO,
            history: Vec::new(),
        }
    }

    /// The default status rule: a status in the retry set, and, for a
    /// request that may have been applied (not idempotent, no key), only the
    /// statuses that say it was not processed (429, 503).
    fn status_rule(&self, status: StatusCode, replay_safe: bool) -> bool {
        self.config.statuses.contains(&status)
            && (replay_safe
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE)
    }

    fn judge_error(&self, e: &Error) -> Verdict {
        let retryable = match e.kind() {
            ErrorKind::IdempotencyMismatch | ErrorKind::Decode | ErrorKind::Request => false,
            ErrorKind::Network => e.is_connect() || e.is_replay_safe(),
            _ => match e.should_retry() {
                Some(advice) => advice,
                None if e.code() == codes::IDEMPOTENCY_KEY_IN_USE => {
                    e.kind() == ErrorKind::Conflict
                }
                None => e
                    .status()
                    .is_some_and(|s| self.status_rule(s, e.is_replay_safe())),
            },
        };
        Verdict {
            retryable,
            hint: e.retry_after(),
            outcome: match e.status() {
                Some(status) => Outcome::Status(status),
                None => Outcome::Failed(e.kind()),
            },
            request_id: e.request_id().map(str::to_owned),
        }
    }

    /// For stacks without the error-mapping layer below: judge the raw response.
    fn judge_response<B, R>(&self, req: &Request<B>, res: &Response<R>) -> Verdict {
        let headers = res.headers();
        let replay_safe =
            is_idempotent(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY);
        let retryable = should_retry_advice(headers)
            .unwrap_or_else(|| self.status_rule(res.status(), replay_safe));
        let request_id = headers
            .get(&self.config.request_id_header)
            .or_else(|| req.headers().get(&self.config.request_id_header))
            .filter(|v| is_valid_request_id(v.as_bytes()))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Verdict {
            retryable,
            hint: retry_after::from_headers(headers),
            outcome: Outcome::Status(res.status()),
            request_id,
        }
    }

    /// How long to wait before the next attempt, or why there is none.
    fn next_wait<B>(
        &self,
        req: &Request<ReplayBody<B>>,
        v: &Verdict,
    ) -> Result<Duration, Option<String>> {
        let cfg = &self.config;
        if !v.retryable || self.attempt >= cfg.max_attempts {
            return Err(None);
        }
        if !req.body().is_replayable() {
            return Err(Some(format!(
                "the request body cannot be sent again (over the {} byte replay buffer, or it failed)",
                cfg.replay_cap
            )));
        }
        if let Some(hint) = v.hint.filter(|h| *h > cfg.max_retry_after) {
            return Err(Some(format!(
                "the server asked to wait {:.2}s, more than max_retry_after {:.2}s",
                hint.as_secs_f64(),
                cfg.max_retry_after.as_secs_f64()
            )));
        }
        let wait = cfg
            .backoff
            .delay(self.attempt)
            .max(v.hint.unwrap_or_default());
        if let Some(Deadline(at)) = req.extensions().get::<Deadline>() {
            if Instant::now() + wait >= *at {
                return Err(Some(format!(
                    "waiting {:.2}s would pass the deadline",
                    wait.as_secs_f64()
                )));
            }
        }
        if let Some(budget) = &cfg.budget {
            if !budget.withdraw() {
                return Err(Some("the retry budget is spent".to_owned()));
            }
        }
        Ok(wait)
    }
}

impl<B, ResB> Policy<Request<ReplayBody<B>>, Response<ResB>, Error> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody<B>>,
        result: &mut Result<Response<ResB>, Error>,
    ) -> Option<Self::Future> {
        self.attempt += 1;
        let waited = std::mem::take(&mut self.waited);
        let verdict = match result {
            Ok(res) if res.status().as_u16() < 400 => None,
            Ok(res) => Some(self.judge_response(req, res)),
            Err(e) => {
                e.fill_sent(SentHeaders::capture(req, &self.config.request_id_header).into_sent());
                Some(self.judge_error(e))
            }
        };
        let decision = match &verdict {
            None => Err(None),
            Some(v) => self.next_wait(req, v),
        };
        let request_id = verdict.as_ref().and_then(|v| v.request_id.clone());
        if let Some(v) = verdict {
            self.history
                .push(Attempt::new(self.attempt, v.outcome, waited).with_request_id(v.request_id));
        }
        let failure = || match &*result {
            Ok(res) => format!("{}", res.status()),
            Err(e) if e.kind() == ErrorKind::Network => format!("network error: {}", e.message()),
            Err(e) => match e.status() {
                Some(status) => format!("{status}"),
                None => e.kind().to_string(),
            },
        };
        match decision {
            Ok(wait) => {
                tracing::info!(
                    target: "kneo::retry",
                    request_id = request_id.as_deref().unwrap_or(""),
                    attempt = self.attempt,
                    "attempt {} failed ({}); retrying in {:.2}s",
                    self.attempt,
                    failure(),
                    wait.as_secs_f64(),
                );
                self.waited = wait;
                self.total_wait += wait;
                Some(tokio::time::sleep(wait))
            }
            Err(reason) => {
                if let Some(reason) = reason {
                    tracing::info!(
                        target: "kneo::retry",
                        request_id = request_id.as_deref().unwrap_or(""),
                        attempt = self.attempt,
                        "attempt {} failed ({}); not retrying: {}",
                        self.attempt,
                        failure(),
                        reason,
                    );
                }
                let history = std::mem::take(&mut self.history);
                match result {
                    Ok(res) => {
                        res.extensions_mut().insert(Attempts {
                            count: self.attempt,
                            total_wait: self.total_wait,
                            history,
                        });
                    }
                    Err(e) => e.set_history(history),
                }
                None
            }
        }
    }

    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}
