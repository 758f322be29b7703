//! Bodies end to end: request bodies replayed byte for byte, oversize bodies
//! sent once and not retried, and error bodies capped however large.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{Full, StreamBody};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo::{Attempts, ClientLayer, ErrorKind};
use kneo_tests::{fast, Reply, ScriptedServer};
use tower::{Layer, ServiceExt};

/// `len` bytes cycling through every byte value.
fn binary(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn request_body_is_replayed_byte_for_byte() {
    let body = binary(10_000);
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(502),
        Reply::json(201, "{}"),
    ])
    .await;
    let req = Request::post("/upload")
        .body(Full::new(body.clone()))
        .expect("valid request");
    let res = server
        .client(fast())
        .request(req)
        .await
        .expect("third attempt");
    assert_eq!(res.status(), StatusCode::CREATED);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.body, body, "attempt {} body", i + 1);
    }
}

#[tokio::test]
async fn body_is_replayed_after_an_early_answer() {
    let body = binary(20_000);
    let server =
        ScriptedServer::start(vec![Reply::status(503).early(), Reply::json(200, "{}")]).await;
    let req = Request::put("/upload")
        .body(Full::new(body.clone()))
        .expect("valid request");
    let res = server.client(fast()).request(req).await.expect("retry");
    assert_eq!(res.status(), StatusCode::OK);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].body, body, "the retry sends the whole body");
}

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type Streamed = StreamBody<Chunks>;

/// `total` bytes as 1 KiB frames, with no length known up front.
fn streamed(total: usize) -> (Streamed, Bytes) {
    let all = binary(total);
    let frames: Vec<_> = all
        .chunks(1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    (StreamBody::new(futures_util::stream::iter(frames)), all)
}

fn stack_over_legacy_client(
    layer: ClientLayer,
) -> <ClientLayer as Layer<
    hyper_util::client::legacy::Client<HttpConnector, ReplayBody<Streamed>>,
>>::Service{
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Streamed>>(HttpConnector::new());
    layer.layer(transport)
}

#[tokio::test]
async fn oversize_streaming_body_is_sent_once_and_not_retried() {
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::json(200, "{}")]).await;
    let svc = stack_over_legacy_client(
        ClientLayer::new().retry(kneo_tests::fast_retry().replay_cap(1024)),
    );
    let (body, all) = streamed(64 * 1024);
    let req = Request::post(server.url("/upload"))
        .body(body)
        .expect("valid request");
    let err = svc.oneshot(req).await.expect_err("the 503 comes back");
    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.count(), 1, "an oversize body is never re-sent");
    let reqs = server.requests();
    assert_eq!(reqs[0].body.len(), all.len());
    assert_eq!(reqs[0].body, all, "the one attempt sent the whole body");
}

#[tokio::test]
async fn streaming_body_under_the_cap_is_replayed() {
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::json(200, "{}")]).await;
    let svc = stack_over_legacy_client(
        ClientLayer::new().retry(kneo_tests::fast_retry().replay_cap(64 * 1024)),
    );
    let (body, all) = streamed(16 * 1024);
    let req = Request::post(server.url("/upload"))
        .body(body)
        .expect("valid request");
    let res = svc.oneshot(req).await.expect("the retry succeeds");
    assert_eq!(res.status(), StatusCode::OK);
    let attempts = res.extensions().get::<Attempts>().expect("attempts");
    assert_eq!(attempts.count(), 2);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, all);
    assert_eq!(reqs[1].body, all);
}

#[tokio::test]
async fn oversize_full_body_is_sent_once_and_not_retried() {
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::json(200, "{}")]).await;
    let body = binary(4096);
    let req = Request::post("/upload")
        .body(Full::new(body.clone()))
        .expect("valid request");
    let err = server
        .client(ClientLayer::new().retry(kneo_tests::fast_retry().replay_cap(1024)))
        .request(req)
        .await
        .expect_err("not retried");
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(server.count(), 1);
    assert_eq!(server.requests()[0].body, body);
}

#[tokio::test]
async fn huge_error_body_is_capped() {
    let huge = Bytes::from(vec![b'x'; 5 * 1024 * 1024]);
    let server = ScriptedServer::start(vec![Reply::status(500).body(huge)]).await;
    let err = server
        .client(fast())
        .request(Request::get("/big").body(Full::default()).expect("valid"))
        .await
        .expect_err("500");
    assert_eq!(err.kind(), ErrorKind::Server);
    assert!(err.body_truncated());
    let text = err.body().as_text().expect("a truncated body is text");
    assert_eq!(text.len(), kneo::core::DEFAULT_BODY_CAP);
    assert_eq!(text.len(), 64 * 1024);
    assert!(text.bytes().all(|b| b == b'x'));
    assert_eq!(err.message().chars().count(), 301, "message is bounded");
}

#[tokio::test]
async fn huge_error_bodies_on_retried_attempts_are_capped_each_time() {
    let mut json = b"{\"error\":{\"code\":\"overloaded\",\"pad\":\"".to_vec();
    json.resize(5 * 1024 * 1024, b'y');
    json.extend_from_slice(b"\"}}");
    let server = ScriptedServer::start(vec![Reply::status(503)
        .header("content-type", "application/json")
        .body(json)])
    .await;
    let err = server
        .client(fast().map_error(kneo::map_error::MapErrorLayer::new().body_cap(100)))
        .request(Request::get("/big").body(Full::default()).expect("valid"))
        .await
        .expect_err("503s");
    assert_eq!(server.count(), 3);
    assert!(err.body_truncated());
    let text = err
        .body()
        .as_text()
        .expect("a truncated body is never parsed");
    assert_eq!(text.len(), 100);
    assert_eq!(
        err.code(),
        kneo::codes::SERVER_ERROR,
        "a truncated body gives no code"
    );
}

#[tokio::test]
async fn small_error_body_is_not_truncated_at_the_cap() {
    let server = ScriptedServer::start(vec![Reply::status(500).body(vec![b'z'; 100])]).await;
    let err = server
        .client(fast().map_error(kneo::map_error::MapErrorLayer::new().body_cap(100)))
        .request(Request::get("/x").body(Full::default()).expect("valid"))
        .await
        .expect_err("500");
    assert!(!err.body_truncated(), "exactly the cap is not truncated");
    assert_eq!(err.body().as_text().map(str::len), Some(100));
}

#[tokio::test]
async fn oversize_body_is_retried_when_it_never_left() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = kneo::Client::builder()
        .base_url(format!("http://127.0.0.1:{port}"))
        .layer(ClientLayer::new().retry(kneo_tests::fast_retry().replay_cap(1024)))
        .build()
        .expect("client builds");
    let req = Request::post("/upload")
        .body(Full::new(binary(4096)))
        .expect("valid request");
    let err = client.request(req).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(
        err.attempts(),
        3,
        "nothing was sent, so it can be sent again"
    );
}
