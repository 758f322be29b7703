//! The throttle: a request waits for a rate-limit reset the server announced
//! instead of being sent into a refusal; a reset too far away fails locally.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo::{codes, ClientLayer, ErrorKind, RateLimit};
use kneo_tests::{fast, fast_retry, Reply, ScriptedServer};
use tower::{Layer, ServiceExt};

/// A 200 whose IETF rate-limit fields say nothing is left for `reset` seconds.
fn exhausted(reset: u64) -> Reply {
    Reply::json(200, "{}")
        .header("ratelimit-policy", r#""minute";q=10;w=60"#)
        .header("ratelimit", &format!(r#""minute";r=0;t={reset}"#))
}

fn get(server: &ScriptedServer) -> Request<Full<Bytes>> {
    Request::get(server.url("/x"))
        .body(Full::default())
        .expect("valid")
}

fn stack(
    layer: ClientLayer,
) -> <ClientLayer as Layer<
    hyper_util::client::legacy::Client<HttpConnector, ReplayBody<Full<Bytes>>>,
>>::Service {
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Full<Bytes>>>(HttpConnector::new());
    layer.layer(transport)
}

#[tokio::test]
async fn the_next_request_waits_for_the_reset() {
    let server = ScriptedServer::start(vec![exhausted(1), Reply::json(200, "{}")]).await;
    let svc = stack(fast());
    let first = svc.clone().oneshot(get(&server)).await.expect("200");
    let rl = first
        .extensions()
        .get::<RateLimit>()
        .expect("parsed into the response");
    assert!(rl.is_exhausted());
    assert_eq!(rl.policy(), Some("minute"));

    let started = Instant::now();
    let second = svc
        .oneshot(get(&server))
        .await
        .expect("sent after the reset");
    assert_eq!(second.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "sent before the reset: after {:?}",
        started.elapsed()
    );
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn a_reset_beyond_max_retry_after_fails_locally_unsent() {
    let server = ScriptedServer::start(vec![exhausted(120)]).await;
    let svc = stack(fast().retry(fast_retry().max_retry_after(Duration::from_secs(60))));
    svc.clone().oneshot(get(&server)).await.expect("200");
    let err = svc.oneshot(get(&server)).await.expect_err("refused here");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert_eq!(err.status(), None);
    let wait = err.retry_after().expect("the wait it would have taken");
    assert!(wait >= Duration::from_secs(119), "{wait:?}");
    assert!(err.request_id().is_some(), "the error names the request");
    assert_eq!(err.rate_limit().and_then(RateLimit::remaining), Some(0));
    assert_eq!(server.count(), 1, "the server saw nothing");
}

#[tokio::test]
async fn the_deadline_is_honoured() {
    let server = ScriptedServer::start(vec![exhausted(5)]).await;
    let svc = stack(fast().deadline(Duration::from_secs(1)));
    svc.clone().oneshot(get(&server)).await.expect("200");
    let err = svc
        .oneshot(get(&server))
        .await
        .expect_err("5 s is past the deadline");
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert_eq!(server.count(), 1, "refused unsent");
}

#[tokio::test]
async fn clones_share_what_they_learned_and_separate_services_do_not() {
    let server = ScriptedServer::start(vec![exhausted(120), Reply::json(200, "{}")]).await;
    let a = stack(fast());
    a.clone().oneshot(get(&server)).await.expect("200");
    let err = a
        .clone()
        .oneshot(get(&server))
        .await
        .expect_err("a clone is blocked");
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert_eq!(server.count(), 1);

    let b = stack(fast());
    b.oneshot(get(&server))
        .await
        .expect("a separate service is not blocked");
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn quota_left_clears_the_block() {
    let server = ScriptedServer::start(vec![
        exhausted(1),
        Reply::json(200, "{}")
            .header("ratelimit-policy", r#""minute";q=10;w=60"#)
            .header("ratelimit", r#""minute";r=9;t=60"#),
        Reply::json(200, "{}"),
    ])
    .await;
    let svc = stack(fast());
    svc.clone().oneshot(get(&server)).await.expect("200");
    let second = svc
        .clone()
        .oneshot(get(&server))
        .await
        .expect("waited, then sent");
    assert!(!second
        .extensions()
        .get::<RateLimit>()
        .expect("parsed")
        .is_exhausted());
    let third = svc.oneshot(get(&server)).await.expect("not blocked");
    assert!(
        third.extensions().get::<RateLimit>().is_none(),
        "no headers on this one"
    );
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn a_github_403_with_nothing_left_is_a_rate_limit() {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let server = ScriptedServer::start(vec![Reply::json(
        403,
        r#"{"message":"API rate limit exceeded"}"#,
    )
    .header("x-ratelimit-limit", "60")
    .header("x-ratelimit-remaining", "0")
    .header("x-ratelimit-used", "60")
    .header("x-ratelimit-reset", &reset.to_string())
    .header("x-ratelimit-resource", "core")])
    .await;
    let client = server.client(fast());
    let err = client
        .request(
            Request::get("/repos/x")
                .body(Full::default())
                .expect("valid"),
        )
        .await
        .expect_err("403");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(err.retry_after().expect("from the reset") > Duration::from_secs(500));
    assert_eq!(
        err.attempts(),
        1,
        "ten minutes is beyond max_retry_after: not waited"
    );
    // And the next request is refused locally, unsent.
    let err = client
        .request(
            Request::get("/repos/y")
                .body(Full::default())
                .expect("valid"),
        )
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert_eq!(server.count(), 1);
}
