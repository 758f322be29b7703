//! Every attempt of one request is the same request: the same framing
//! headers as the bare client sends, and the same trailers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body::{Body, Frame};
use http_body_util::{Full, StreamBody};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo_tests::{fast, Recorded, Reply, ScriptedServer};
use tower::{Layer, ServiceExt};

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type Streamed = StreamBody<Frames>;

fn streamed(frames: Vec<Frame<Bytes>>) -> Streamed {
    StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ))
}

fn framing(r: &Recorded) -> (Option<String>, Option<String>) {
    (r.header("content-length"), r.header("transfer-encoding"))
}

/// What the bare hyper-util client sends for `req`: its framing headers.
async fn bare_framing<B>(req: Request<B>) -> (Option<String>, Option<String>)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = ScriptedServer::start(vec![Reply::status(200)]).await;
    let bare = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, B>(HttpConnector::new());
    let (mut parts, body) = req.into_parts();
    parts.uri = server.url(parts.uri.path()).parse().expect("valid");
    bare.request(Request::from_parts(parts, body))
        .await
        .expect("bare request");
    framing(&server.requests()[0])
}

/// The framing of every attempt through the stack, against 503, 503, 200.
async fn stack_framing<B>(req: Request<B>) -> Vec<(Option<String>, Option<String>)>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<kneo::BoxError>,
{
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(503),
        Reply::status(200),
    ])
    .await;
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<B>>(HttpConnector::new());
    let (mut parts, body) = req.into_parts();
    parts.uri = server.url(parts.uri.path()).parse().expect("valid");
    fast()
        .layer(transport)
        .oneshot(Request::from_parts(parts, body))
        .await
        .expect("the third attempt succeeds");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    reqs.iter().map(framing).collect()
}

#[tokio::test]
async fn empty_bodies_are_framed_like_the_bare_client_on_every_attempt() {
    for method in [Method::GET, Method::POST, Method::DELETE, Method::PUT] {
        let req = || {
            Request::builder()
                .method(method.clone())
                .uri("/x")
                .body(Full::<Bytes>::default())
                .expect("valid")
        };
        let bare = bare_framing(req()).await;
        let attempts = stack_framing(req()).await;
        assert!(
            attempts.iter().all(|a| *a == bare),
            "{method}: bare {bare:?}, attempts {attempts:?}"
        );
    }
}

#[tokio::test]
async fn sized_and_streamed_bodies_keep_their_framing_on_every_attempt() {
    let sized = || {
        Request::put("/x")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("valid")
    };
    let bare = bare_framing(sized()).await;
    assert_eq!(bare, (Some("5".to_owned()), None));
    assert!(stack_framing(sized()).await.iter().all(|a| *a == bare));

    let chunked = || {
        Request::put("/x")
            .body(streamed(vec![
                Frame::data(Bytes::from_static(b"ab")),
                Frame::data(Bytes::from_static(b"cd")),
            ]))
            .expect("valid")
    };
    let bare = bare_framing(chunked()).await;
    assert_eq!(bare, (None, Some("chunked".to_owned())));
    let attempts = stack_framing(chunked()).await;
    assert!(attempts.iter().all(|a| *a == bare), "{attempts:?}");
}

#[tokio::test]
async fn trailers_are_sent_on_every_attempt() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::status(200)]).await;
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Streamed>>(HttpConnector::new());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "sha256-abc".parse().expect("valid"));
    let body = streamed(vec![
        Frame::data(Bytes::from_static(b"one ")),
        Frame::data(Bytes::from_static(b"two ")),
        Frame::data(Bytes::from_static(b"three")),
        Frame::trailers(trailers.clone()),
    ]);
    let req = Request::put(server.url("/upload"))
        .header("trailer", "x-checksum")
        .body(body)
        .expect("valid");
    fast()
        .layer(transport)
        .oneshot(req)
        .await
        .expect("a PUT is retried after the hang-up");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    for (n, r) in reqs.iter().enumerate() {
        assert_eq!(&r.body[..], b"one two three", "attempt {}", n + 1);
        assert_eq!(r.trailers.as_ref(), Some(&trailers), "attempt {}", n + 1);
    }
}
