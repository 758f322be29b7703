//! One retry rule: `Error::is_retryable()` and the retry policy under its
//! default configuration agree on every row of the mapping table (status ×
//! method × key × server advice × server code), for mapped errors and raw
//! responses alike, and for transport failures.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::Full;
use kneo::map_error::MapErrorLayer;
use kneo::retry::{Backoff, RetryLayer};
use kneo::{Error, Sent};
use tower::{service_fn, Layer, ServiceExt};

const STATUSES: &[u16] = &[
    302, 400, 401, 402, 403, 404, 408, 409, 410, 413, 422, 425, 429, 500, 501, 502, 503, 504, 505,
    599,
];
const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];
const ADVICE: &[Option<&str>] = &[None, Some("true"), Some("false")];
const CODES: &[Option<&str>] = &[
    None,
    Some("idempotency_key_in_use"),
    Some("idempotency_key_mismatch"),
    Some("rate_limit_exceeded"),
];

#[derive(Debug, Clone, Copy)]
struct Row {
    status: u16,
    method: &'static Method,
    keyed: bool,
    advice: Option<&'static str>,
    code: Option<&'static str>,
}

impl Row {
    /// The response this row's server sends; the code in the body
    /// (`in_body`) or in an `x-error-code` header.
    fn response(&self, in_body: bool) -> Response<Full<Bytes>> {
        let mut b = Response::builder().status(self.status);
        if let Some(advice) = self.advice {
            b = b.header("x-should-retry", advice);
        }
        let body = match self.code {
            Some(code) if in_body => {
                b = b.header("content-type", "application/json");
                format!(r#"{{"code":"{code}"}}"#)
            }
            Some(code) => {
                b = b.header("x-error-code", code);
                String::new()
            }
            None => String::new(),
        };
        b.body(Full::new(Bytes::from(body)))
            .expect("valid test response")
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(self.method.clone()).uri("/x");
        if self.keyed {
            b = b.header("idempotency-key", "key-1");
        }
        b.body(Full::default()).expect("valid test request")
    }

    fn sent(&self) -> Sent {
        let sent = Sent::new(self.method.clone());
        if self.keyed {
            sent.with_idempotency_key("key-1")
        } else {
            sent
        }
    }

    /// What the error says: "would kneo retry this?"
    fn error_says(&self) -> bool {
        let (parts, body) = self.response(true).into_parts();
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(body))
            .expect("a full body is ready")
            .expect("infallible")
            .to_bytes();
        Error::from_response(&parts, &body, false, self.sent()).is_retryable()
    }

    /// What the default policy does: `true` when it sent a second attempt.
    async fn policy_does(&self, mapped: bool) -> bool {
        let calls = Arc::new(AtomicUsize::new(0));
        let upstream = {
            let (calls, row) = (calls.clone(), *self);
            service_fn(move |_req: Request<_>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let res = if n == 0 {
                    row.response(mapped)
                } else {
                    Response::new(Full::default())
                };
                async move { Ok::<_, Infallible>(res) }
            })
        };
        let retry = default_policy_observed();
        let _ = if mapped {
            retry
                .layer(MapErrorLayer::new().layer(upstream))
                .oneshot(self.request())
                .await
                .map(drop)
        } else {
            // No error mapping below: the policy judges the raw response.
            retry
                .layer(upstream.map_err(|e: Infallible| -> Error { match e {} }))
                .oneshot(self.request())
                .await
                .map(drop)
        };
        calls.load(Ordering::SeqCst) == 2
    }
}

/// The default policy, with two attempts so a retry shows as a second call
/// and no backoff wait (neither changes the decision after attempt 1).
fn default_policy_observed() -> RetryLayer {
    RetryLayer::new()
        .max_attempts(2)
        .backoff(Backoff::new().base(Duration::ZERO))
}

#[tokio::test]
async fn is_retryable_and_the_default_policy_agree_on_every_row() {
    let mut rows = 0;
    let mut retried = 0;
    for &status in STATUSES {
        for method in METHODS {
            for keyed in [false, true] {
                for &advice in ADVICE {
                    for &code in CODES {
                        let row = Row {
                            status,
                            method,
                            keyed,
                            advice,
                            code,
                        };
                        let says = row.error_says();
                        assert_eq!(says, row.policy_does(true).await, "mapped: {row:?}");
                        // Raw: the code can only come from a header, and the
                        // same table gives the same answer.
                        assert_eq!(says, row.policy_does(false).await, "raw: {row:?}");
                        rows += 1;
                        retried += usize::from(says);
                    }
                }
            }
        }
    }
    assert_eq!(
        rows,
        STATUSES.len() * METHODS.len() * 2 * ADVICE.len() * CODES.len()
    );
    // The table is not trivially all-or-nothing.
    assert!(retried > 0 && retried < rows, "{retried} of {rows}");
}

#[tokio::test]
async fn transport_failures_agree_too() {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, TimedOut};
    for kind in [ConnectionRefused, ConnectionReset, TimedOut] {
        for method in METHODS {
            for keyed in [false, true] {
                let row = Row {
                    status: 200,
                    method,
                    keyed,
                    advice: None,
                    code: None,
                };
                let mut sent = Sent::new(method.clone());
                if keyed {
                    sent = sent.with_idempotency_key("key-1");
                }
                let says = Error::network(std::io::Error::from(kind), sent).is_retryable();
                let calls = Arc::new(AtomicUsize::new(0));
                let upstream = {
                    let calls = calls.clone();
                    service_fn(move |_req: Request<_>| {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if n == 0 {
                                Err(std::io::Error::from(kind))
                            } else {
                                Ok(Response::new(Full::<Bytes>::default()))
                            }
                        }
                    })
                };
                let svc = default_policy_observed().layer(MapErrorLayer::new().layer(upstream));
                let _ = svc.oneshot(row.request()).await;
                let does = calls.load(Ordering::SeqCst) == 2;
                assert_eq!(says, does, "{kind:?} {method} keyed={keyed}");
            }
        }
    }
}
