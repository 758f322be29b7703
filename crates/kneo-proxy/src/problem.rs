//! The proxy's own answers, when it has no upstream answer to give: RFC 9457
//! problem details (`application/problem+json`), written by kneo-core's
//! [`ProblemResponse`] with its types ([`kneo::core::problem`]: one
//! vocabulary with kneo-server's), the status and type of an upstream's
//! failure from [`ProblemType::of_error`].
//!
//! | status | when | `type` | `code` |
//! |---|---|---|---|
//! | 502 | the upstream could not be reached, or hung up | `urn:kneo:problem:upstream-unreachable` | `api_connection` |
//! | 504 | the per-attempt timeout or the deadline ran out | `urn:kneo:problem:upstream-timeout` | `api_timeout` |
//! | 503 | the proxy is at `max_connections` | `urn:kneo:problem:overloaded` | `too_many_connections` |
//! | 400 | the request cannot be forwarded: a target that is not a path or an absolute URL, or a path that would leave the upstream's prefix (see [`path`](crate::path)) | `urn:kneo:problem:bad-request` | `invalid_request` |
//! | 405 | `CONNECT` (with `Allow`) | `urn:kneo:problem:bad-request` | `method_not_allowed` |
//! | 502, 504 | as above, for an upgrade handshake (WebSocket): sent once, never retried | as above | as above |
//! | 429 | the upstream's rate-limit headers said nothing is left until a reset further than `--max-retry-after` (or past the deadline): not sent, with `Retry-After` | `urn:kneo:problem:rate-limited` | `rate_limited_locally` |
//!
//! Extensions: `code`, `kind` (kneo's [`ErrorKind`](kneo::ErrorKind) as a
//! string, or `overloaded`), `request_id` (the id sent upstream) and
//! `attempts`. A kneo client behind the proxy reads them back as it reads any
//! problem: `err.code()` is `api_connection`, say.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW};
use http::{Response, StatusCode};
use http_body_util::Full;
use kneo::core::problem::{ProblemResponse, ProblemType};
use kneo::Error;

use crate::outcome::ExchangeOutcome;

/// `code` of a 503 at `max_connections`.
pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";

/// `code` of the 405 for `CONNECT`.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

/// One problem answer, before it is a response.
#[derive(Debug, Clone)]
pub(crate) struct ProblemAnswer {
    pub(crate) outcome: ExchangeOutcome,
    pub(crate) status: StatusCode,
    problem_type: ProblemType,
    detail: String,
    code: String,
    kind: &'static str,
    pub(crate) request_id: Option<String>,
    pub(crate) attempts: u32,
    retry_after: Option<std::time::Duration>,
}

impl ProblemAnswer {
    /// What to tell the caller when the retry layer gave up with `err`.
    pub(crate) fn from_error(err: &Error) -> ProblemAnswer {
        // One mapping, kneo-core's: which status and type a failure is.
        let (status, problem_type) = ProblemType::of_error(err);
        if status == StatusCode::TOO_MANY_REQUESTS {
            return ProblemAnswer {
                outcome: ExchangeOutcome::RateLimited,
                status,
                problem_type,
                detail: err.message().to_owned(),
                code: err.code().to_owned(),
                kind: err.kind().as_str(),
                request_id: err.request_id().map(str::to_owned),
                attempts: 0,
                retry_after: err.retry_after(),
            };
        }
        let outcome = if status == StatusCode::GATEWAY_TIMEOUT {
            ExchangeOutcome::Timeout
        } else {
            ExchangeOutcome::Unreachable
        };
        let attempts = err.attempts();
        let tries = if attempts == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{attempts} attempts")
        };
        // kneo's message is the source chain (hyper's and the OS's words),
        // never a header value; the upstream URL has no userinfo or query.
        let detail = match outcome {
            ExchangeOutcome::Timeout => format!(
                "the upstream did not answer in time ({tries}): {}",
                err.message()
            ),
            _ => format!(
                "the upstream could not be reached or hung up ({tries}): {}",
                err.message()
            ),
        };
        ProblemAnswer {
            outcome,
            status,
            problem_type,
            detail,
            code: err.code().to_owned(),
            kind: err.kind().as_str(),
            request_id: err.request_id().map(str::to_owned),
            attempts,
            retry_after: None,
        }
    }

    /// A connection over `max_connections`.
    pub(crate) fn overloaded(request_id: Option<String>) -> ProblemAnswer {
        ProblemAnswer {
            outcome: ExchangeOutcome::Overloaded,
            status: StatusCode::SERVICE_UNAVAILABLE,
            problem_type: ProblemType::OVERLOADED,
            detail: "the proxy is serving as many connections as it may; retry shortly".to_owned(),
            code: TOO_MANY_CONNECTIONS.to_owned(),
            kind: "overloaded",
            request_id,
            attempts: 0,
            retry_after: None,
        }
    }

    /// A request that cannot be forwarded (its target cannot be joined to
    /// the upstream's URL).
    pub(crate) fn bad_request(request_id: Option<String>) -> ProblemAnswer {
        ProblemAnswer {
            outcome: ExchangeOutcome::BadRequest,
            status: StatusCode::BAD_REQUEST,
            problem_type: ProblemType::BAD_REQUEST,
            detail: "the request target cannot be forwarded to the upstream".to_owned(),
            code: kneo::codes::INVALID_REQUEST.to_owned(),
            kind: kneo::ErrorKind::Request.as_str(),
            request_id,
            attempts: 0,
            retry_after: None,
        }
    }

    /// A target that would leave the upstream's prefix, or is not a path.
    pub(crate) fn bad_target(e: crate::path::PathError) -> ProblemAnswer {
        ProblemAnswer {
            detail: format!("the request target cannot be forwarded: {e}"),
            ..ProblemAnswer::bad_request(None)
        }
    }

    /// An upgrade handshake (WebSocket) that got no answer: sent once,
    /// never retried, so one attempt. `timed_out` is a `504`, else a `502`.
    /// `detail` is hyper's and the OS's words, never a header value.
    pub(crate) fn handshake_failed(timed_out: bool, detail: &str) -> ProblemAnswer {
        let (outcome, status, problem_type, code, what) = if timed_out {
            (
                ExchangeOutcome::Timeout,
                StatusCode::GATEWAY_TIMEOUT,
                ProblemType::UPSTREAM_TIMEOUT,
                kneo::codes::API_TIMEOUT,
                "did not answer the upgrade in time",
            )
        } else {
            (
                ExchangeOutcome::Unreachable,
                StatusCode::BAD_GATEWAY,
                ProblemType::UPSTREAM_UNREACHABLE,
                kneo::codes::API_CONNECTION,
                "could not be reached or hung up before answering the upgrade",
            )
        };
        ProblemAnswer {
            outcome,
            status,
            problem_type,
            detail: format!("the upstream {what} (1 attempt; upgrades are not retried): {detail}"),
            code: code.to_owned(),
            kind: kneo::ErrorKind::Network.as_str(),
            request_id: None,
            attempts: 1,
            retry_after: None,
        }
    }

    /// `CONNECT`: the proxy forwards requests, it does not open tunnels.
    pub(crate) fn method_not_allowed() -> ProblemAnswer {
        ProblemAnswer {
            status: StatusCode::METHOD_NOT_ALLOWED,
            detail:
                "kneo proxy forwards requests to its upstream; it does not open tunnels (CONNECT)"
                    .to_owned(),
            code: METHOD_NOT_ALLOWED.to_owned(),
            ..ProblemAnswer::bad_request(None)
        }
    }

    /// The response: kneo's problem, with the extensions `kind` and
    /// `attempts`, `X-Request-ID` when there is an id.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut problem = ProblemResponse::new(self.status, self.code)
            .problem_type(self.problem_type)
            .detail(self.detail)
            .extension("kind", self.kind)
            .extension("attempts", self.attempts);
        if let Some(id) = self.request_id {
            problem = problem.request_id(id);
        }
        if self.outcome == ExchangeOutcome::Overloaded {
            problem = problem.retry_after(std::time::Duration::from_secs(1));
        }
        if let Some(wait) = self.retry_after {
            problem = problem.retry_after(wait);
        }
        let mut res: Response<Full<Bytes>> = problem.to_response();
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            // Every method but CONNECT is forwarded.
            res.headers_mut().insert(
                ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};
    use http::Method;
    use http_body_util::BodyExt;
    use kneo::core::PROBLEM_JSON;
    use kneo::Sent;

    #[tokio::test]
    async fn connect_failure_is_a_502_with_kneo_code() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = Error::network(refused, Sent::new(Method::GET).with_request_id("r-1"));
        let answer = ProblemAnswer::from_error(&err);
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        let res = answer.into_response();
        assert_eq!(res.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(res.headers()["x-request-id"], "r-1");
        let bytes = res.into_body().collect().await.expect("full").to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body["code"], "api_connection");
        assert_eq!(body["kind"], "network");
        assert_eq!(body["status"], 502);
        assert_eq!(body["attempts"], 1);
        assert_eq!(body["request_id"], "r-1");
        assert_eq!(body["type"], "urn:kneo:problem:upstream-unreachable");
    }

    #[test]
    fn timeout_is_a_504() {
        let err = Error::timeout(std::time::Duration::from_secs(1), Sent::new(Method::GET));
        let answer = ProblemAnswer::from_error(&err);
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(answer.code, "api_timeout");
    }

    #[test]
    fn overload_says_when_to_come_back() {
        let res = ProblemAnswer::overloaded(None).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[RETRY_AFTER], "1");
        assert!(!res.headers().contains_key("x-request-id"));
    }
}
