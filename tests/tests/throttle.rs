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
    // Before the first request: its answer's reset is a second after it came,
    // however long the machine then takes to send the second.
    let started = Instant::now();
    let first = svc.clone().oneshot(get(&server)).await.expect("200");
    let rl = first
        .extensions()
        .get::<RateLimit>()
        .expect("parsed into the response");
    assert!(rl.is_exhausted());
    assert_eq!(rl.policy(), Some("minute"));

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

/// A 200 with OpenAI's headers: no request left for six minutes.
fn openai_exhausted() -> Reply {
    Reply::json(200, "{}")
        .header("x-ratelimit-limit-requests", "60")
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "6m0s")
}

fn get_with(
    server: &ScriptedServer,
    path: &str,
    header: &str,
    value: &str,
) -> Request<Full<Bytes>> {
    Request::get(server.url(path))
        .header(header, value)
        .body(Full::default())
        .expect("valid")
}

/// An upstream whose quota is spent for `spent` (the value of `header`) only.
async fn per_key_upstream(header: &'static str, spent: &'static str) -> ScriptedServer {
    ScriptedServer::with(move |_, req| {
        if req.header(header).as_deref() == Some(spent) {
            openai_exhausted()
        } else {
            Reply::json(200, "{}")
        }
    })
    .await
}

#[tokio::test]
async fn one_keys_spent_quota_does_not_block_another_key() {
    let server = per_key_upstream("authorization", "Bearer sk-A").await;
    let svc = stack(fast());
    let first = svc
        .clone()
        .oneshot(get_with(
            &server,
            "/v1/chat",
            "authorization",
            "Bearer sk-A",
        ))
        .await
        .expect("200");
    assert!(first
        .extensions()
        .get::<RateLimit>()
        .expect("parsed")
        .is_exhausted());

    // Another key reaches the upstream.
    let other = svc
        .clone()
        .oneshot(get_with(
            &server,
            "/v1/models",
            "authorization",
            "Bearer sk-B",
        ))
        .await
        .expect("sk-B is not throttled by sk-A's quota");
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(server.count(), 2);
    assert_eq!(
        server.requests()[1].header("authorization").as_deref(),
        Some("Bearer sk-B")
    );

    // sk-A itself is still refused, unsent.
    let err = svc
        .clone()
        .oneshot(get_with(
            &server,
            "/v1/models",
            "authorization",
            "Bearer sk-A",
        ))
        .await
        .expect_err("sk-A's six minutes are beyond max_wait");
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert!(err.retry_after().expect("the wait") > Duration::from_secs(350));
    assert_eq!(server.count(), 2, "sk-A was not sent again");

    // And a request with no credential at all is a partition of its own.
    svc.oneshot(get(&server))
        .await
        .expect("anonymous is not sk-A");
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn one_x_api_keys_spent_quota_does_not_block_another() {
    let server = per_key_upstream("x-api-key", "tenant1").await;
    let svc = stack(fast());
    svc.clone()
        .oneshot(get_with(&server, "/v1/messages", "x-api-key", "tenant1"))
        .await
        .expect("200");
    svc.clone()
        .oneshot(get_with(&server, "/v1/messages", "x-api-key", "tenant2"))
        .await
        .expect("tenant2 is not throttled by tenant1's quota");
    assert_eq!(server.count(), 2);
    let err = svc
        .oneshot(get_with(&server, "/v1/messages", "x-api-key", "tenant1"))
        .await
        .expect_err("tenant1 is still spent");
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn the_spent_key_waits_for_its_reset_and_the_other_is_sent() {
    let server = ScriptedServer::with(|_, req| {
        if req.header("authorization").as_deref() == Some("Bearer sk-A")
            && req.uri.path() == "/first"
        {
            exhausted(1)
        } else {
            Reply::json(200, "{}")
        }
    })
    .await;
    let svc = stack(fast());
    // Before `/first`: its answer's reset is a second after it came, however
    // long `/b` then takes.
    let started = Instant::now();
    svc.clone()
        .oneshot(get_with(&server, "/first", "authorization", "Bearer sk-A"))
        .await
        .expect("200");
    svc.clone()
        .oneshot(get_with(&server, "/b", "authorization", "Bearer sk-B"))
        .await
        .expect("sk-B sent");
    svc.oneshot(get_with(&server, "/a", "authorization", "Bearer sk-A"))
        .await
        .expect("sk-A sent after its reset");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "sk-A was sent before its reset: after {:?}",
        started.elapsed()
    );
    let paths: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        ["/first", "/b", "/a"],
        "sk-B went first, without waiting for sk-A"
    );
}

#[tokio::test]
async fn credentials_none_shares_one_throttle_per_authority() {
    let server = per_key_upstream("authorization", "Bearer sk-A").await;
    let svc = stack(fast().throttle(
        kneo::throttle::ThrottleLayer::new().credentials(kneo::credential::Credentials::none()),
    ));
    svc.clone()
        .oneshot(get_with(&server, "/x", "authorization", "Bearer sk-A"))
        .await
        .expect("200");
    let err = svc
        .oneshot(get_with(&server, "/x", "authorization", "Bearer sk-B"))
        .await
        .expect_err("one partition for every caller");
    assert_eq!(err.code(), codes::RATE_LIMITED_LOCALLY);
    assert_eq!(server.count(), 1);
}
