//! The retry decision, [`RetryPolicy`]: kneo's [`Retry`](super::Retry)
//! drives it, and it is a tower [`Policy`] for tower's own `Retry`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kneo_core::retry_rule::{is_retryable, RetryFacts};
use kneo_core::{
    is_success, is_success_for, retry_after, Attempt, AttemptOutcome, Error, ErrorKind, Sent,
};
use tokio::time::Sleep;
use tower::retry::budget::Budget;
use tower::retry::Policy;

use super::backoff::Backoff;
use super::body::ReplayBody;
use super::quota::{Buckets, Cause, RetryQuota};
use crate::deadline::Deadline;
use crate::partition;
use crate::request::copy_attempt;
use crate::trace::AttemptNumber;

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
    pub(crate) quota: Option<RetryQuota>,
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
            .field("quota", &self.quota)
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
/// The retry layer (kneo's or tower's) clones the policy for every request, so
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
    /// The retry quota's buckets, shared by the service and its clones.
    buckets: Option<Arc<Buckets>>,
    /// What this request spent from its bucket.
    spent: u32,
}

/// What one failed attempt says about retrying.
struct Verdict {
    retryable: bool,
    hint: Option<Duration>,
    outcome: AttemptOutcome,
    request_id: Option<String>,
}

impl RetryPolicy {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        RetryPolicy {
            buckets: config.quota.map(|q| Arc::new(Buckets::new(q))),
            config,
            attempt: 0,
            waited: Duration::ZERO,
            total_wait: Duration::ZERO,
            history: Vec::new(),
            spent: 0,
        }
    }

    /// The configuration every request through the layer shares.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    fn judge_error(&self, e: &Error) -> Verdict {
        Verdict {
            retryable: is_retryable(&RetryFacts::of_error(e), &self.config.statuses),
            hint: e.retry_after(),
            outcome: match e.status() {
                Some(status) => AttemptOutcome::Status(status),
                None if e.is_connect() => AttemptOutcome::NotSent,
                None => AttemptOutcome::Failed(e.kind()),
            },
            request_id: e.request_id().map(str::to_owned),
        }
    }

    /// For stacks without the error-mapping layer below: judge the raw
    /// response by its status and headers.
    fn judge_response<R>(&self, sent: &Sent, res: &Response<R>) -> Verdict {
        let headers = res.headers();
        let method = sent.method().unwrap_or(&http::Method::POST);
        let keyed = sent.idempotency_key_value().is_some();
        let facts = RetryFacts::of_response(res.status(), headers, method, keyed);
        let request_id = sent.reported_request_id(headers);
        Verdict {
            retryable: is_retryable(&facts, &self.config.statuses),
            hint: retry_after::from_headers(headers),
            outcome: AttemptOutcome::Status(res.status()),
            request_id,
        }
    }

    /// How long to wait before the next attempt, or why there is none.
    fn next_wait<B>(
        &mut self,
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
        if Deadline::would_pass(req, wait) {
            return Err(Some(format!(
                "waiting {:.2}s would pass the deadline",
                wait.as_secs_f64()
            )));
        }
        if let Some(budget) = &cfg.budget {
            if !budget.withdraw() {
                return Err(Some("the retry budget is spent".to_owned()));
            }
        }
        if let Some(buckets) = &self.buckets {
            let cause = match (v.outcome, v.hint) {
                (AttemptOutcome::Failed(_) | AttemptOutcome::NotSent, _) => Cause::Transport,
                (_, Some(_)) => Cause::Advised,
                (_, None) => Cause::Status,
            };
            match buckets.withdraw(partition(req), cause) {
                Some(cost) => self.spent += cost,
                None => return Err(Some("the retry quota is spent".to_owned())),
            }
        }
        Ok(wait)
    }
}

/// How an attempt failed, for the retry log: the status, or the error.
fn failure<R>(result: &Result<Response<R>, Error>) -> String {
    match result {
        Ok(res) => format!("{}", res.status()),
        Err(e) if e.kind() == ErrorKind::Network => format!("network error: {}", e.message()),
        Err(e) => match e.status() {
            Some(status) => format!("{status}"),
            None => e.kind().to_string(),
        },
    }
}

/// A request's retry-quota partition: its [authority](partition::authority).
fn partition<B>(req: &Request<B>) -> &str {
    partition::authority(req).map_or("", |a| a.as_str())
}

/// The request an attempt sent, as the policy sees it.
pub(crate) enum Attempted<'a, B> {
    /// The copy kept to send again.
    Again(&'a mut Request<ReplayBody<B>>),
    /// A request that is never sent again (`max_attempts` is 1): its identity.
    Once(&'a Sent),
}

impl<B> Attempted<'_, B> {
    /// `true` when a response with `status` answered the request.
    fn succeeded(&self, status: StatusCode) -> bool {
        match self {
            Attempted::Again(req) => is_success_for(status, req.headers()),
            Attempted::Once(sent) => is_success(status, sent.is_conditional()),
        }
    }

    fn judge_response<R>(&self, policy: &RetryPolicy, res: &Response<R>) -> Verdict {
        match self {
            Attempted::Again(req) => policy.judge_response(&Sent::of(req), res),
            Attempted::Once(sent) => policy.judge_response(sent, res),
        }
    }
}

impl RetryPolicy {
    /// Judges the attempt that just ended and records it: `Some(wait)` to
    /// send the request again after `wait` (the copy is marked as the next
    /// attempt), `None` when `result` is final; [`finish`](Self::finish)
    /// then puts the record on it.
    pub(crate) fn decide<B, ResB>(
        &mut self,
        mut req: Attempted<'_, B>,
        result: &Result<Response<ResB>, Error>,
    ) -> Option<Duration> {
        self.attempt += 1;
        let waited = std::mem::take(&mut self.waited);
        let verdict = match result {
            Ok(res) if req.succeeded(res.status()) => None,
            Ok(res) => Some(req.judge_response(self, res)),
            Err(e) => Some(self.judge_error(e)),
        };
        let decision = match (&verdict, &mut req) {
            (None, _) => Err(None),
            (Some(v), Attempted::Again(req)) => self.next_wait(req, v),
            (Some(_), Attempted::Once(_)) => Err(None),
        };
        let request_id = verdict.as_ref().and_then(|v| v.request_id.clone());
        if let Some(v) = verdict {
            self.history
                .push(Attempt::new(self.attempt, v.outcome, waited).with_request_id(v.request_id));
        }
        let log = |decision: std::fmt::Arguments<'_>| {
            tracing::info!(
                target: "kneo::retry",
                request_id = request_id.as_deref().unwrap_or(""),
                attempt = self.attempt,
                "attempt {} failed ({}); {}",
                self.attempt,
                failure(result),
                decision,
            );
        };
        match decision {
            Ok(wait) => {
                log(format_args!("retrying in {:.2}s", wait.as_secs_f64()));
                self.waited = wait;
                self.total_wait += wait;
                if let Attempted::Again(req) = req {
                    // The next attempt's span says which attempt it is.
                    req.extensions_mut().insert(AttemptNumber(self.attempt + 1));
                }
                Some(wait)
            }
            Err(reason) => {
                if let Some(reason) = reason {
                    log(format_args!("not retrying: {reason}"));
                }
                None
            }
        }
    }

    /// Puts the record of the attempts on the final result: [`Attempts`] on
    /// a response (and a success refunds the retry quota), the history on
    /// an error. `req` is the copy kept to send again, if any (a request
    /// never sent again spent nothing from the quota).
    pub(crate) fn finish<B, ResB>(
        &mut self,
        req: Option<&Request<B>>,
        result: Result<Response<ResB>, Error>,
    ) -> Result<Response<ResB>, Error> {
        match result {
            Ok(mut res) => {
                self.finish_response(req, &mut res);
                Ok(res)
            }
            Err(e) => Err(e.with_history(std::mem::take(&mut self.history))),
        }
    }

    /// [`finish`](Self::finish) for a response.
    fn finish_response<B, ResB>(&mut self, req: Option<&Request<B>>, res: &mut Response<ResB>) {
        if let (Some(buckets), Some(req)) = (&self.buckets, req) {
            if is_success_for(res.status(), req.headers()) {
                buckets.refund(partition(req), self.spent);
            }
        }
        res.extensions_mut().insert(Attempts {
            count: self.attempt,
            total_wait: self.total_wait,
            history: std::mem::take(&mut self.history),
        });
    }
}

/// For tower's own `Retry` (see [`RetryLayer::policy`](super::RetryLayer::policy));
/// kneo's [`Retry`](super::Retry) drives the same decision with a future of
/// its own.
impl<B, ResB> Policy<Request<ReplayBody<B>>, Response<ResB>, Error> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody<B>>,
        result: &mut Result<Response<ResB>, Error>,
    ) -> Option<Self::Future> {
        if let Some(wait) = self.decide(Attempted::Again(req), result) {
            return Some(tokio::time::sleep(wait));
        }
        match result {
            Ok(res) => self.finish_response(Some(&*req), res),
            // tower lends the error: it is taken out for a moment, on the
            // final failure only, to be finished with its history.
            Err(e) => {
                let placeholder = Error::invalid_request("the retry record was being attached");
                let history = std::mem::take(&mut self.history);
                *e = std::mem::replace(e, placeholder).with_history(history);
            }
        }
        None
    }

    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        Some(copy_attempt(req))
    }
}
