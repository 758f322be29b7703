//! kneo-server's `IdempotencyLayer`: what each way a keyed request can end
//! leaves behind (streams, bodies cut after the head, request ids, trailers,
//! gateway-made answers), over real sockets, with a hyper client that reads
//! the response frame by frame. Each scenario runs with `MemoryStore` and
//! with `RedisStore` on a real `redis-server`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kneo::core::Delivery;
use kneo::BoxError;
use kneo_server::idempotency::RequestBody;
use kneo_server::{IdempotencyLayer, RedisStore, Store};
use kneo_tests::redis::RedisServer;
use tokio::sync::Notify;
use tower::{service_fn, Layer};

type HandlerBody = BoxBody<Bytes, BoxError>;

#[derive(Default)]
struct State {
    runs: AtomicUsize,
    gate: Notify,
}

fn full(data: &'static str) -> HandlerBody {
    Full::new(Bytes::from_static(data.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

/// The handler: what it answers depends on the path.
async fn handle(
    state: Arc<State>,
    req: Request<RequestBody<Incoming>>,
) -> Result<Response<HandlerBody>, Infallible> {
    state.runs.fetch_add(1, Ordering::SeqCst);
    let mut res = Response::new(full("ok"));
    match req.uri().path() {
        // "first", then (once the test opens the gate) "second".
        "/stream" => {
            let gate = state.clone();
            let frames = stream::unfold(0, move |step| {
                let gate = gate.clone();
                async move {
                    let data = match step {
                        0 => "first",
                        1 => {
                            gate.gate.notified().await;
                            "second"
                        }
                        _ => return None,
                    };
                    Some((Ok::<_, BoxError>(Frame::data(Bytes::from(data))), step + 1))
                }
            });
            *res.body_mut() = StreamBody::new(frames).boxed();
        }
        // A head, 7 bytes, then (once the test opens the gate) the body
        // breaks off.
        "/cut" => {
            let gate = state.clone();
            let frames = stream::unfold(0, move |step| {
                let gate = gate.clone();
                async move {
                    let frame = match step {
                        0 => Ok(Frame::data(Bytes::from_static(b"partial"))),
                        1 => {
                            gate.gate.notified().await;
                            Err::<Frame<Bytes>, BoxError>("the body broke off".into())
                        }
                        _ => return None,
                    };
                    Some((frame, step + 1))
                }
            });
            *res.body_mut() = StreamBody::new(frames).boxed();
        }
        // Echoes the request's id, as a request-id layer would.
        "/echo-id" => {
            if let Some(id) = req.headers().get("x-request-id") {
                res.headers_mut().insert("x-request-id", id.clone());
            }
        }
        // An id of the handler's own.
        "/own-id" => {
            res.headers_mut()
                .insert("x-request-id", "req_upstream1".parse().expect("valid"));
        }
        "/trailers" => {
            res.headers_mut()
                .insert("trailer", "x-checksum".parse().expect("valid"));
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc".parse().expect("valid"));
            let frames = stream::iter([
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"data"))),
                Ok(Frame::trailers(trailers)),
            ]);
            *res.body_mut() = StreamBody::new(frames).boxed();
        }
        // A gateway's own answer, marked with what became of the request.
        path => {
            let (status, delivery) = match path {
                "/gateway/not-sent" => (StatusCode::BAD_GATEWAY, Delivery::NotSent),
                "/gateway/cut" => (StatusCode::BAD_GATEWAY, Delivery::Unknown),
                _ => (StatusCode::GATEWAY_TIMEOUT, Delivery::TimedOut),
            };
            *res.status_mut() = status;
            *res.body_mut() = full(r#"{"code":"api_connection"}"#);
            res.extensions_mut().insert(delivery);
        }
    }
    Ok(res)
}

struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start<St: Store>(store: St) -> Server {
        let state = Arc::new(State::default());
        let handler = {
            let state = state.clone();
            service_fn(move |req| handle(state.clone(), req))
        };
        let svc = IdempotencyLayer::new(store).layer(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server { addr, state, task }
    }

    fn runs(&self) -> usize {
        self.state.runs.load(Ordering::SeqCst)
    }

    /// Sends a keyed POST on a new connection; the response streams.
    async fn post(&self, path: &str, key: &str, request_id: Option<&str>) -> Response<Incoming> {
        self.post_as(path, key, request_id, None).await
    }

    /// [`post`](Self::post), with a `Content-Type`.
    async fn post_as(
        &self,
        path: &str,
        key: &str,
        request_id: Option<&str>,
        content_type: Option<&str>,
    ) -> Response<Incoming> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::post(path)
            .header("host", "localhost")
            .header("idempotency-key", key)
            .header("te", "trailers");
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid");
        sender.send_request(req).await.expect("a response head")
    }
}

/// The whole body, or what arrived before it failed.
async fn read(res: Response<Incoming>) -> (Bytes, Option<HeaderMap>, bool) {
    let mut body = res.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        match body.frame().await {
            None => return (Bytes::from(data), trailers, false),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Some(Err(_)) => return (Bytes::from(data), trailers, true),
        }
    }
}

fn replayed(res: &Response<Incoming>) -> bool {
    res.headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

/// A keyed stream reaches its caller as it is produced (the second frame
/// waits for the test, which waits for the first), and is recorded.
async fn a_keyed_stream_is_streamed_while_recorded<St: Store>(store: St) {
    let server = Server::start(store).await;
    let res = server.post("/stream", "stream-1", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first frame arrives before the handler ends")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "first");
    server.state.gate.notify_one();
    let rest = body.collect().await.expect("the rest").to_bytes();
    assert_eq!(rest, "second");

    let replay = server.post("/stream", "stream-1", None).await;
    assert!(replayed(&replay));
    assert_eq!(read(replay).await.0, "firstsecond");
    assert_eq!(server.runs(), 1);
}

/// A body that breaks off after the head: the caller gets the head and what
/// arrived; the key is kept (a retry is told 410, never run again).
async fn a_body_cut_after_its_head_keeps_the_key<St: Store>(store: St) {
    let server = Server::start(store).await;
    let res = server.post("/cut", "cut-1", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "partial");
    server.state.gate.notify_one();
    let rest = body.collect().await;
    assert!(rest.is_err(), "the caller sees the body fail");

    let retry = server.post("/cut", "cut-1", None).await;
    assert_eq!(retry.status(), StatusCode::GONE);
    let (body, _, _) = read(retry).await;
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem");
    assert_eq!(problem["code"], "idempotency_response_not_stored");
    assert_eq!(server.runs(), 1);
}

/// A replay answers with the retry's own request id and names the first
/// request's under `Original-Request`; an id the handler made stays.
async fn a_replay_carries_this_request_s_id<St: Store>(store: St) {
    let server = Server::start(store).await;
    let first = server.post("/echo-id", "id-1", Some("req-first")).await;
    assert_eq!(first.headers()["x-request-id"], "req-first");
    read(first).await;
    let replay = server.post("/echo-id", "id-1", Some("req-retry")).await;
    assert!(replayed(&replay));
    assert_eq!(replay.headers()["x-request-id"], "req-retry");
    assert_eq!(replay.headers()["original-request"], "req-first");

    let first = server.post("/own-id", "id-2", Some("req-a")).await;
    read(first).await;
    let replay = server.post("/own-id", "id-2", Some("req-b")).await;
    assert!(replayed(&replay));
    assert_eq!(replay.headers()["x-request-id"], "req_upstream1");
    assert!(!replay.headers().contains_key("original-request"));

    // The layer's own answers carry the request's id too.
    let in_use = server
        .post("/other-path-same-key", "id-2", Some("req-c"))
        .await;
    assert_eq!(in_use.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(in_use.headers()["x-request-id"], "req-c");
    let (body, _, _) = read(in_use).await;
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem");
    assert_eq!(problem["request_id"], "req-c");
    assert_eq!(server.runs(), 2);
}

/// Trailers go to the first caller; a replay, which has none, does not
/// announce them.
async fn trailers_reach_the_caller_but_are_not_replayed<St: Store>(store: St) {
    let server = Server::start(store).await;
    let first = server.post("/trailers", "t-1", None).await;
    assert_eq!(first.headers()["trailer"], "x-checksum");
    let (data, trailers, _) = read(first).await;
    assert_eq!(data, "data");
    assert_eq!(trailers.expect("trailers")["x-checksum"], "abc");
    let replay = server.post("/trailers", "t-1", None).await;
    assert!(replayed(&replay));
    assert!(!replay.headers().contains_key("trailer"));
    let (data, trailers, _) = read(replay).await;
    assert_eq!(data, "data");
    assert!(trailers.is_none());
}

/// A gateway's answer for a request that never left frees the key; one for a
/// request that was sent and lost is recorded as `upstream_outcome_unknown`,
/// never as the upstream's answer, and never sent again.
async fn gateway_answers_follow_the_delivery_rule<St: Store>(store: St) {
    let server = Server::start(store).await;
    for _ in 0..2 {
        let res = server.post("/gateway/not-sent", "g-1", None).await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert!(!replayed(&res));
        read(res).await;
    }
    assert_eq!(server.runs(), 2, "not sent: the key was free again");

    for (path, status) in [
        ("/gateway/cut", StatusCode::BAD_GATEWAY),
        ("/gateway/timed-out", StatusCode::GATEWAY_TIMEOUT),
    ] {
        let first = server.post(path, path, None).await;
        assert_eq!(first.status(), status);
        let (body, _, _) = read(first).await;
        assert_eq!(
            body, r#"{"code":"api_connection"}"#,
            "the caller got the gateway's answer"
        );
        let retry = server.post(path, path, None).await;
        assert!(replayed(&retry));
        assert_eq!(retry.status(), status);
        assert_eq!(retry.headers()["x-should-retry"], "false");
        let (body, _, _) = read(retry).await;
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem");
        assert_eq!(problem["code"], "upstream_outcome_unknown");
    }
    assert_eq!(server.runs(), 4, "a lost answer is never sent again");
}

/// The same bytes as JSON and as a form are two requests: the same key
/// with the other media type is a mismatch (422), not a replay; a charset
/// parameter or the type's case does not make another request.
async fn the_media_type_is_part_of_the_request<St: Store>(store: St) {
    let server = Server::start(store).await;
    let json = server
        .post_as("/echo-id", "ct-1", None, Some("application/json"))
        .await;
    assert_eq!(json.status(), StatusCode::OK);
    read(json).await;
    let form = server
        .post_as(
            "/echo-id",
            "ct-1",
            None,
            Some("application/x-www-form-urlencoded"),
        )
        .await;
    assert_eq!(form.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let same = server
        .post_as(
            "/echo-id",
            "ct-1",
            None,
            Some("Application/JSON; charset=utf-8"),
        )
        .await;
    assert!(replayed(&same));
    assert_eq!(server.runs(), 1);
}

/// RFC 8941 keys: a quoted key may hold spaces and carry parameters,
/// which are ignored (the same key with other parameters is a replay).
async fn structured_field_keys_with_spaces_and_parameters<St: Store>(store: St) {
    let server = Server::start(store).await;
    let first = server.post("/echo-id", "\"order 7\";v=1", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    read(first).await;
    let again = server.post("/echo-id", "\"order 7\";v=2;x", None).await;
    assert!(replayed(&again));
    assert_eq!(server.runs(), 1);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(kneo_server::MemoryStore::new()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(redis) = super::RedisServer::start() else { return };
                    super::$name(super::redis_store(&redis).await).await
                }
            )*
        }
    };
}

suite!(
    a_keyed_stream_is_streamed_while_recorded,
    a_body_cut_after_its_head_keeps_the_key,
    a_replay_carries_this_request_s_id,
    trailers_reach_the_caller_but_are_not_replayed,
    gateway_answers_follow_the_delivery_rule,
    the_media_type_is_part_of_the_request,
    structured_field_keys_with_spaces_and_parameters,
);

async fn redis_store(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("redis-server is up")
}
