//! A connection closed mid-request (no response at all): retried when replay
//! is safe (idempotent method or an idempotency key), never re-sent otherwise.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{Full, StreamBody};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo::{AttemptOutcome, Attempts, ErrorKind};
use kneo_tests::{fast, Reply, ScriptedServer};
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn get_is_retried_after_a_hangup() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::json(200, r#"{"ok":1}"#)]).await;
    let res = server
        .client(fast())
        .request(Request::get("/x").body(Full::default()).expect("valid"))
        .await
        .expect("the retry succeeds");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.count(), 2);
    let attempts = res.extensions().get::<Attempts>().expect("attempts");
    assert_eq!(attempts.count(), 2);
    assert_eq!(
        attempts.history()[0].outcome,
        AttemptOutcome::Failed(ErrorKind::Network)
    );
}

#[tokio::test]
async fn keyed_post_is_retried_after_a_hangup() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::json(201, "{}")]).await;
    let req = Request::post("/charges")
        .body(Full::new(Bytes::from_static(b"{\"amount\":3}")))
        .expect("valid");
    let res = server
        .client(fast())
        .request(req)
        .await
        .expect("the retry succeeds");
    assert_eq!(res.status(), StatusCode::CREATED);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let key = reqs[0].header("idempotency-key").expect("key stamped");
    assert_eq!(reqs[1].header("idempotency-key"), Some(key));
    assert_eq!(&reqs[0].body[..], b"{\"amount\":3}");
    assert_eq!(reqs[1].body, reqs[0].body);
}

#[tokio::test]
async fn caller_keyed_post_is_retried_even_when_keys_are_not_stamped() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::json(201, "{}")]).await;
    let req = Request::post("/charges")
        .header("idempotency-key", "caller-key-3")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid");
    server
        .client(fast().idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])))
        .request(req)
        .await
        .expect("the retry succeeds");
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn unkeyed_post_is_not_resent_after_a_hangup() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::json(201, "{}")]).await;
    let req = Request::post("/charges")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid");
    let err = server
        .client(fast().idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])))
        .request(req)
        .await
        .expect_err("it may have been applied");
    assert_eq!(server.count(), 1, "never re-sent");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(!err.is_connect(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(err.code(), kneo::codes::API_CONNECTION);
    assert_eq!(err.status(), None);
    assert_eq!(err.idempotency_key(), None);
    assert_eq!(err.attempts(), 1);
    let id = server.requests()[0]
        .header("x-request-id")
        .expect("id stamped");
    assert_eq!(err.request_id(), Some(id.as_str()));
}

#[tokio::test]
async fn get_hung_up_on_every_attempt_fails_after_max_attempts() {
    let server = ScriptedServer::start(vec![Reply::close()]).await;
    let err = server
        .client(fast())
        .request(Request::get("/x").body(Full::default()).expect("valid"))
        .await
        .expect_err("always hung up");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert_eq!(err.attempts(), 3);
    assert_eq!(server.count(), 3);
}

type Slow = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// 16 frames of 1 KiB, each after a short sleep: still being sent when an
/// early answer arrives.
fn slow_body() -> (Slow, Bytes) {
    let all: Bytes = (0..16 * 1024)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let chunks = all.clone();
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let chunks = chunks.clone();
        async move {
            if i >= 16 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let frame = Frame::data(chunks.slice(i * 1024..(i + 1) * 1024));
            Some((Ok(frame), i + 1))
        }
    });
    (StreamBody::new(Box::pin(stream)), all)
}

#[tokio::test]
async fn streaming_body_is_replayed_whole_after_an_early_answer() {
    let server =
        ScriptedServer::start(vec![Reply::status(503).early(), Reply::json(200, "{}")]).await;
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Slow>>(HttpConnector::new());
    let svc = fast().layer(transport);
    let (body, all) = slow_body();
    let req = Request::post(server.url("/upload"))
        .body(body)
        .expect("valid");
    let res = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the retry does not hang")
        .expect("the retry succeeds");
    assert_eq!(res.status(), StatusCode::OK);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].body, all, "the retry sends the whole body");
}

#[tokio::test]
async fn keyed_post_with_an_oversize_body_is_not_resent_after_a_hangup() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::json(201, "{}")]).await;
    let body = Bytes::from(vec![b'b'; 100 * 1024]);
    let req = Request::post("/charges")
        .body(Full::new(body.clone()))
        .expect("valid");
    let err = server
        .client(fast())
        .request(req)
        .await
        .expect_err("over the 64 KiB replay cap");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.idempotency_key().is_some());
    assert_eq!(server.count(), 1);
    assert_eq!(server.requests()[0].body, body);
}

#[tokio::test]
async fn unkeyed_post_on_a_pooled_connection_is_not_resent_after_a_hangup() {
    let server = ScriptedServer::start(vec![Reply::json(200, "{}"), Reply::close()]).await;
    let client = server
        .client(fast().idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])));
    client
        .request(Request::get("/warm").body(Full::default()).expect("valid"))
        .await
        .expect("the first request succeeds and pools its connection");
    let req = Request::post("/charges")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid");
    let err = client.request(req).await.expect_err("hung up");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert_eq!(
        server.count(),
        2,
        "the POST arrived once and was not re-sent"
    );
}
