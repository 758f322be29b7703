//! Retries end to end: which statuses are retried, server wait hints
//! (`Retry-After` seconds and HTTP-dates, `retry-after-ms`), the hint cap,
//! the deadline, the per-attempt timeout and the recorded history.
//!
//! Timing is only ever checked from below: a wait is at least the hint.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use kneo::{codes, AttemptOutcome, Attempts, ClientLayer, ErrorKind};
use kneo_tests::{fast, Reply, ScriptedServer};

fn get() -> Request<Full<Bytes>> {
    Request::get("/r")
        .body(Full::default())
        .expect("valid request")
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/r")
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
        .expect("valid request")
}

/// Sends `req` to a server that always answers `reply`; returns the error and
/// how many requests the server saw.
async fn always(
    reply: Reply,
    layer: ClientLayer,
    req: Request<Full<Bytes>>,
) -> (kneo::Error, usize) {
    let server = ScriptedServer::start(vec![reply]).await;
    let err = server
        .client(layer)
        .request(req)
        .await
        .expect_err("the server always fails");
    (err, server.count())
}

#[tokio::test]
async fn retryable_statuses_are_retried_up_to_max_attempts() {
    for status in [429, 502, 503, 504] {
        let (err, count) = always(Reply::status(status), fast(), get()).await;
        assert_eq!(count, 3, "GET {status}");
        assert_eq!(err.attempts(), 3, "GET {status}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
    }
    for status in [500, 501, 400, 401, 403, 404] {
        let (err, count) = always(Reply::status(status), fast(), get()).await;
        assert_eq!(count, 1, "GET {status} is not retried");
        assert_eq!(err.attempts(), 1);
    }
    let (_, count) = always(Reply::status(503), fast().max_attempts(5), get()).await;
    assert_eq!(count, 5, "max_attempts is honoured");
}

#[tokio::test]
async fn unkeyed_post_is_retried_only_on_statuses_that_say_not_processed() {
    let no_keys = || fast().idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([]));
    for status in [429, 503] {
        let (_, count) = always(Reply::status(status), no_keys(), post()).await;
        assert_eq!(
            count, 3,
            "unkeyed POST {status}: not processed, safe to retry"
        );
    }
    for status in [502, 504] {
        let (err, count) = always(Reply::status(status), no_keys(), post()).await;
        assert_eq!(count, 1, "unkeyed POST {status} may have been applied");
        assert_eq!(err.idempotency_key(), None);
    }
    // With the default layer the POST is keyed, so a 502 is safe to retry.
    let (err, count) = always(Reply::status(502), fast(), post()).await;
    assert_eq!(count, 3);
    assert!(err.idempotency_key().is_some());
}

#[tokio::test]
async fn should_retry_header_overrides_the_status_rule() {
    let (_, count) = always(
        Reply::status(503).header("x-should-retry", "false"),
        fast(),
        get(),
    )
    .await;
    assert_eq!(count, 1);
    let (err, count) = always(
        Reply::status(500).header("x-should-retry", "true"),
        fast(),
        get(),
    )
    .await;
    assert_eq!(count, 3);
    assert_eq!(err.should_retry(), Some(true));
}

#[tokio::test]
async fn retry_after_seconds_is_waited_at_least() {
    let server = ScriptedServer::start(vec![
        Reply::status(503).header("retry-after", "1"),
        Reply::json(200, "{}"),
    ])
    .await;
    let start = Instant::now();
    let res = server
        .client(fast())
        .request(get())
        .await
        .expect("second attempt succeeds");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.count(), 2);
    let attempts = res.extensions().get::<Attempts>().expect("attempts");
    assert_eq!(attempts.count(), 2);
    assert!(attempts.total_wait() >= Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_http_date_is_waited_at_least() {
    let start_wall = SystemTime::now();
    let start = Instant::now();
    // The next whole second after start + 1 s: more than 1 s away, and
    // exactly representable as an HTTP-date.
    let whole = start_wall
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let at = UNIX_EPOCH + Duration::from_secs(whole + 2);
    let date = httpdate::fmt_http_date(at);
    let server = ScriptedServer::start(vec![
        Reply::status(429).header("retry-after", &date),
        Reply::json(200, "{}"),
    ])
    .await;
    let res = server
        .client(fast())
        .request(get())
        .await
        .expect("second attempt succeeds");
    let wanted = at.duration_since(start_wall).expect("in the future");
    assert!(wanted > Duration::from_secs(1));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited {:?} for {date}",
        start.elapsed()
    );
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn retry_after_ms_is_waited_at_least_and_wins_over_seconds() {
    let server = ScriptedServer::start(vec![
        Reply::status(429)
            .header("retry-after-ms", "300")
            .header("retry-after", "30"),
        Reply::json(200, "{}"),
    ])
    .await;
    // If `Retry-After: 30` were used, 30 s > max_retry_after would end retrying.
    let layer =
        ClientLayer::new().retry(kneo_tests::fast_retry().max_retry_after(Duration::from_secs(5)));
    let start = Instant::now();
    let res = server
        .client(layer)
        .request(get())
        .await
        .expect("retry-after-ms is honoured");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn hint_over_max_retry_after_ends_retrying_at_once() {
    // Default cap (60 s).
    let (err, count) = always(
        Reply::status(429).header("retry-after", "120"),
        fast(),
        get(),
    )
    .await;
    assert_eq!(count, 1);
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(err.attempts(), 1);

    // A configured cap.
    let (err, count) = always(
        Reply::status(503).header("retry-after-ms", "1500"),
        ClientLayer::new().retry(kneo_tests::fast_retry().max_retry_after(Duration::from_secs(1))),
        get(),
    )
    .await;
    assert_eq!(count, 1);
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn garbage_hint_falls_back_to_backoff() {
    // Each would end retrying at once (over the 1 s cap) if it were trusted.
    for garbage in ["1e9", "soon", "-1", "inf", "99 seconds"] {
        let (err, count) = always(
            Reply::status(503)
                .header("retry-after", garbage)
                .header("retry-after-ms", garbage),
            ClientLayer::new()
                .retry(kneo_tests::fast_retry().max_retry_after(Duration::from_secs(1))),
            get(),
        )
        .await;
        assert_eq!(count, 3, "Retry-After {garbage:?} is ignored");
        assert_eq!(err.retry_after(), None, "Retry-After {garbage:?}");
    }
}

#[tokio::test]
async fn deadline_cuts_a_long_hint_short() {
    let (err, count) = always(
        Reply::status(503).header("retry-after", "1"),
        fast().deadline(Duration::from_millis(300)),
        get(),
    )
    .await;
    assert!(count < 3, "the wait would pass the deadline");
    assert_eq!(count, 1);
    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn deadline_bounds_a_slow_attempt() {
    let start = Instant::now();
    let (err, count) = always(
        Reply::status(200).delay(Duration::from_secs(2)),
        fast().deadline(Duration::from_millis(300)),
        get(),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(count, 1, "no time is left for another attempt");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.code(), codes::API_TIMEOUT);
}

#[tokio::test]
async fn attempt_timeout_is_a_retried_network_timeout_for_get() {
    // The answer never comes in time, however slow the machine.
    let server =
        ScriptedServer::start(vec![Reply::status(200).delay(Duration::from_secs(30))]).await;
    let layer = fast().attempt_timeout(Duration::from_millis(250));
    let start = Instant::now();
    let err = server
        .client(layer)
        .request(get())
        .await
        .expect_err("every attempt times out");
    assert!(start.elapsed() >= Duration::from_millis(750));
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.is_timeout(), "{err:?}");
    assert!(!err.is_connect());
    assert_eq!(err.code(), codes::API_TIMEOUT);
    assert_eq!(err.status(), None);
    assert_eq!(err.attempts(), 3, "a timed-out GET is retried");
    // How many attempts got to the server before their time ran out is the
    // machine's business; at least one did.
    kneo_tests::guarded("an attempt reaches the server", async {
        while server.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(server.count() <= 3, "{}", server.count());
    let reqs = server.requests();
    let id = reqs[0].header("x-request-id").expect("id stamped");
    assert_eq!(
        err.request_id(),
        Some(id.as_str()),
        "filled in after the timeout"
    );
    for a in err.history() {
        assert_eq!(a.outcome, AttemptOutcome::Failed(ErrorKind::Network));
    }
}

#[tokio::test]
async fn attempt_timeout_on_unkeyed_post_is_not_retried() {
    let (err, count) = always(
        Reply::status(200).delay(Duration::from_secs(2)),
        fast()
            .attempt_timeout(Duration::from_millis(100))
            .idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])),
        post(),
    )
    .await;
    assert_eq!(count, 1, "it may have been applied");
    assert!(err.is_timeout());
    assert_eq!(err.method(), Some(&Method::POST));
}

#[tokio::test]
async fn success_carries_attempts() {
    let server = ScriptedServer::start(vec![Reply::json(200, "{}")]).await;
    let res = server.client(fast()).request(get()).await.expect("ok");
    let attempts = res.extensions().get::<Attempts>().expect("attempts");
    assert_eq!(attempts.count(), 1);
    assert!(attempts.history().is_empty());

    let server = ScriptedServer::start(vec![
        Reply::status(503).header("x-request-id", "srv-a"),
        Reply::status(502),
        Reply::json(200, "{}"),
    ])
    .await;
    let res = server.client(fast()).request(get()).await.expect("ok");
    let attempts = res.extensions().get::<Attempts>().expect("attempts");
    assert_eq!(attempts.count(), 3);
    let history = attempts.history();
    assert_eq!(history.len(), 2, "the failed attempts before the success");
    assert_eq!(history[0].number, 1);
    assert_eq!(
        history[0].outcome,
        AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(history[0].request_id.as_deref(), Some("srv-a"));
    assert_eq!(history[1].number, 2);
    assert_eq!(
        history[1].outcome,
        AttemptOutcome::Status(StatusCode::BAD_GATEWAY)
    );
    let sent_id = server.requests()[1]
        .header("x-request-id")
        .expect("id stamped");
    assert_eq!(history[1].request_id.as_deref(), Some(sent_id.as_str()));
}

#[tokio::test]
async fn error_history_lists_every_attempt_with_status_and_wait() {
    let server = ScriptedServer::start(vec![
        Reply::status(503).header("retry-after-ms", "50"),
        Reply::status(429).header("retry-after-ms", "80"),
        Reply::status(504),
    ])
    .await;
    let err = server
        .client(fast())
        .request(get())
        .await
        .expect_err("three failures");
    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.status(), Some(StatusCode::GATEWAY_TIMEOUT));
    assert_eq!(err.attempts(), 3);
    let h = err.history();
    assert_eq!(h.len(), 3);
    let statuses: Vec<_> = h.iter().map(|a| a.outcome).collect();
    assert_eq!(
        statuses,
        [
            AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
            AttemptOutcome::Status(StatusCode::TOO_MANY_REQUESTS),
            AttemptOutcome::Status(StatusCode::GATEWAY_TIMEOUT),
        ]
    );
    let numbers: Vec<_> = h.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(h[0].wait_before, Duration::ZERO);
    assert!(h[1].wait_before >= Duration::from_millis(50), "{h:?}");
    assert!(h[2].wait_before >= Duration::from_millis(80), "{h:?}");
    assert!(err.to_string().contains("attempts=3"), "{err}");
}

/// The design promises a tower `Policy`: `RetryPolicy` under tower's own
/// `RetryLayer` (no kneo `Retry` around it) retries a 503 and waits the
/// `Retry-After` it names.
#[tokio::test]
async fn the_policy_under_towers_retry_layer_honours_retry_after() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use kneo::map_error::MapErrorLayer;
    use kneo::retry::{ReplayBody, RetryLayer};
    use tower::{ServiceBuilder, ServiceExt};

    let server = ScriptedServer::start(vec![
        Reply::status(503).header("retry-after", "1"),
        Reply::json(200, "{}"),
    ])
    .await;
    let policy = RetryLayer::new().no_budget().policy();
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(policy))
        .layer(MapErrorLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http());
    let req = Request::get(server.url("/wait"))
        .body(ReplayBody::new(Full::new(Bytes::new()), 1024))
        .expect("valid request");
    let started = Instant::now();
    let res = svc.oneshot(req).await.expect("the second attempt succeeds");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.count(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}, less than the Retry-After",
        started.elapsed()
    );
    assert_eq!(
        res.extensions().get::<Attempts>().map(Attempts::count),
        Some(2)
    );
}
