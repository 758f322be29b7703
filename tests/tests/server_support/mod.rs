//! Shared by the kneo-server end-to-end tests: one scripted handler served
//! as an axum app and as a plain hyper service, both on `127.0.0.1:0`
//! behind `IdempotencyLayer`, and kneo clients to call them.
//!
//! The handler's behaviour depends only on the path and on how many times it
//! ran (so retries of one request behave the same, as the fingerprint needs):
//!
//! | path | does |
//! |---|---|
//! | `/pay[?sleep_ms=N]` | 201 `{"run":n,"len":body length}`, after N ms |
//! | `/status/{code}` | that status, `{"run":n}` |
//! | `/block` | the first run waits for [`State::gate`]; later ones answer at once; 201 `{"run":n}` |
//! | `/big?bytes=N[&exact=1]` | 200 with N bytes, in 1 KiB chunks (or one exact-size chunk) |
//! | `/panic` | panics |
//! | `/err` | the service fails (hyper app; the axum app answers 500) |

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kneo::{BoxError, ClientLayer};
use kneo_server::idempotency::RequestBody;
use kneo_server::{IdempotencyLayer, Store};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

pub use kneo_tests::fast;
pub use kneo_tests::redis::RedisServer;

/// Which kind of app serves the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// An axum `Router` with `.layer(IdempotencyLayer)`.
    Axum,
    /// A `tower::service_fn` under the layer, served by hyper-util.
    Hyper,
}

/// What the handler did, shared by every server of a test.
#[derive(Debug, Default)]
pub struct State {
    /// Handler runs so far.
    pub runs: AtomicUsize,
    /// Releases the first `/block` run.
    pub gate: Notify,
    /// Signalled when a run of `/block` starts.
    pub blocked: Notify,
    /// Drop the connection instead of sending the next response (after the
    /// handler and the layer ran).
    pub lose_next: AtomicBool,
    /// The status of every response the layer produced, in order.
    pub statuses: Mutex<Vec<u16>>,
}

impl State {
    /// Handler runs so far.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// How many responses had `status`.
    pub fn count(&self, status: u16) -> usize {
        self.statuses
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|s| **s == status)
            .count()
    }
}

type HandlerBody = BoxBody<Bytes, BoxError>;

fn json(status: u16, value: serde_json::Value) -> Response<HandlerBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-handler", "yes")
        .body(
            Full::new(Bytes::from(value.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("valid response")
}

fn query(uri: &Uri, name: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// The handler both apps run.
async fn handle(
    state: Arc<State>,
    uri: Uri,
    body: Bytes,
) -> Result<Response<HandlerBody>, BoxError> {
    let n = state.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let path = uri.path();
    if path == "/pay" {
        if let Some(ms) = query(&uri, "sleep_ms") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        return Ok(json(201, serde_json::json!({"run": n, "len": body.len()})));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code.parse().map_err(|_| "bad status")?;
        return Ok(json(code, serde_json::json!({"run": n})));
    }
    match path {
        "/block" => {
            if n == 1 {
                state.blocked.notify_one();
                state.gate.notified().await;
            }
            Ok(json(201, serde_json::json!({"run": n})))
        }
        "/big" => {
            let len = query(&uri, "bytes").unwrap_or(0) as usize;
            let data = vec![b'x'; len];
            let body = if query(&uri, "exact") == Some(1) {
                Full::new(Bytes::from(data)).map_err(|e| match e {}).boxed()
            } else {
                let chunks: Vec<Result<Frame<Bytes>, BoxError>> = data
                    .chunks(1024)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                StreamBody::new(stream::iter(chunks)).boxed()
            };
            Ok(Response::new(body))
        }
        "/panic" => panic!("handler panicked on purpose"),
        "/err" => Err("the service failed on purpose".into()),
        _ => Ok(json(404, serde_json::json!({"error": "no route"}))),
    }
}

/// A running test server. Dropped, it stops accepting.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves `app` behind `layer`.
    pub async fn start<St: Store>(app: App, layer: IdempotencyLayer<St>) -> TestServer {
        Self::with_state(app, layer, Arc::new(State::default())).await
    }

    /// Serves `app` behind `layer`, counting into `state` (shared by several servers).
    pub async fn with_state<St: Store>(
        app: App,
        layer: IdempotencyLayer<St>,
        state: Arc<State>,
    ) -> TestServer {
        match app {
            App::Axum => {
                let handler_state = state.clone();
                let router = axum::Router::new()
                    .route(
                        "/{*path}",
                        axum::routing::any(move |uri: Uri, body: Bytes| {
                            let state = handler_state.clone();
                            async move {
                                match handle(state, uri, body).await {
                                    Ok(res) => axum::response::IntoResponse::into_response(res),
                                    Err(_) => axum::response::IntoResponse::into_response(
                                        StatusCode::INTERNAL_SERVER_ERROR,
                                    ),
                                }
                            }
                        }),
                    )
                    .layer(layer);
                serve(router, state).await
            }
            App::Hyper => {
                let handler_state = state.clone();
                let handler = tower::service_fn(move |req: Request<RequestBody<Incoming>>| {
                    let state = handler_state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        handle(state, parts.uri, body).await
                    }
                });
                serve(layer.layer(handler), state).await
            }
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kneo client for this server, authenticated as `api_key`.
    pub fn client(&self, api_key: &str, layer: ClientLayer) -> kneo::Client {
        kneo::Client::builder()
            .base_url(self.url())
            .api_key(api_key)
            .layer(layer)
            .build()
            .expect("client builds")
    }

    /// Handler runs so far.
    pub fn runs(&self) -> usize {
        self.state.runs()
    }
}

/// Records the status of every response and loses one on demand, outside
/// the idempotency layer (as a network would).
#[derive(Clone)]
struct Outer<S> {
    inner: S,
    state: Arc<State>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Outer<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<B>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let svc = self.inner.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let res: Response<B> = match svc.oneshot(req).await {
                Ok(res) => res,
                Err(e) => return Err(e.into()),
            };
            state
                .statuses
                .lock()
                .expect("not poisoned")
                .push(res.status().as_u16());
            if state.lose_next.swap(false, Ordering::SeqCst) {
                let lost: BoxError = "response lost on purpose".into();
                return Err(lost);
            }
            Ok(res)
        })
    }
}

/// Serves `svc` on a fresh loopback port, recording statuses and losing a
/// response on demand.
async fn serve<S, B>(svc: S, state: Arc<State>) -> TestServer
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let outer = Outer {
        inner: svc,
        state: state.clone(),
    };
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(outer.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestServer { addr, state, task }
}

/// What came back from a call.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    /// `true` when the response was a replay.
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

/// Sends `method path` with `body`, and the key when given, through `client`.
pub async fn send(
    client: &kneo::Client,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> Result<Reply, kneo::Error> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request");
    let res = client.request(req).await?;
    let (status, headers) = (res.status(), res.headers().clone());
    let body = client.read_bytes(res).await.expect("body reads");
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A keyed POST.
pub async fn post(
    client: &kneo::Client,
    path: &str,
    key: &str,
    body: &'static str,
) -> Result<Reply, kneo::Error> {
    send(client, Method::POST, path, Some(key), body).await
}

/// Asserts `err` came from one of the layer's problem responses.
pub fn assert_problem(err: &kneo::Error, status: u16, code: &str) {
    assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{err}");
    assert_eq!(err.code(), code, "{err}");
    let problem = err.problem().expect("an application/problem+json body");
    // One of kneo's types, titled as the type is (kneo-core's one vocabulary).
    let known = kneo::core::problem::ProblemType::ALL
        .iter()
        .find(|t| t.uri() == problem.r#type)
        .unwrap_or_else(|| panic!("not one of kneo's types: {:?}", problem.r#type));
    assert_eq!(problem.title.as_deref(), Some(known.title()));
    assert!(problem.detail.as_deref().is_some_and(|d| !d.is_empty()));
    let body = err.body().as_json().expect("a JSON body");
    assert_eq!(body["status"], status, "the status member");
}

/// One attempt, no retry.
pub fn once() -> ClientLayer {
    fast().max_attempts(1)
}

/// Polls `cond` every 10 ms until it holds (bounded: 10 s).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}
