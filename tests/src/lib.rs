//! Support for kneo's end-to-end tests: a real hyper server on `127.0.0.1:0`,
//! scripted per attempt, that records every request it receives.
//!
//! ```no_run
//! # async fn demo() {
//! use kneo_tests::{Reply, ScriptedServer};
//!
//! let server = ScriptedServer::start(vec![Reply::status(503), Reply::json(200, r#"{"ok":true}"#)]).await;
//! // ... send requests to server.url("/x") ...
//! assert_eq!(server.requests().len(), 2);
//! # }
//! ```

pub mod faults;
pub mod ledger;
pub mod observed;
pub mod postgres;
pub mod proxy_client;
pub mod proxy_rss;
pub mod redis;
pub mod sidecar;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kneo::retry::{Backoff, RetryLayer};
use kneo::ClientLayer;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status to answer with.
    pub status: StatusCode,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Bytes,
    /// Wait this long before answering (after reading the request body).
    pub delay: Duration,
    /// Close the connection without answering (after reading the request).
    pub close: bool,
    /// Answer before reading the request body.
    pub early: bool,
    /// Wait for this gate (a permit: `notify_one`) before answering, after
    /// the `delay`.
    pub gate: Option<Arc<Notify>>,
}

impl Reply {
    /// An empty-bodied response with `status`.
    pub fn status(status: u16) -> Self {
        Reply {
            status: StatusCode::from_u16(status).expect("test status is valid"),
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
            close: false,
            early: false,
            gate: None,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: &str) -> Self {
        Reply::status(status)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// Close the connection mid-request: the client sees no response.
    pub fn close() -> Self {
        Reply {
            close: true,
            ..Reply::status(200)
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Waits before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answers without reading the request body.
    pub fn early(mut self) -> Self {
        self.early = true;
        self
    }

    /// Answers only once `gate` gives it a permit (`gate.notify_one()`), so
    /// a test holds the request in flight for as long as it needs.
    pub fn gated(mut self, gate: Arc<Notify>) -> Self {
        self.gate = Some(gate);
        self
    }
}

/// How long a test waits on anything before it calls it a hang: a guard,
/// never a claim about speed.
pub const GUARD: Duration = Duration::from_secs(30);

/// `f`, or a panic naming `what` once it has waited [`GUARD`].
pub async fn guarded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {GUARD:?}"))
}

/// The default stack with a 1 ms backoff base, so tests without a server
/// hint do not wait.
pub fn fast() -> ClientLayer {
    ClientLayer::new().retry(fast_retry())
}

/// The default retry layer with a 1 ms backoff base.
pub fn fast_retry() -> RetryLayer {
    RetryLayer::new().backoff(Backoff::new().base(Duration::from_millis(1)))
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// Every header.
    pub headers: HeaderMap,
    /// The whole body (empty when the reply was `early`, or while the script runs).
    pub body: Bytes,
    /// The body's trailers, when it had any.
    pub trailers: Option<HeaderMap>,
}

impl Recorded {
    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

type Script = dyn Fn(usize, &Recorded) -> Reply + Send + Sync;

/// A loopback HTTP/1 server answering by script. Dropped, it stops accepting.
pub struct ScriptedServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ScriptedServer {
    /// Answers the n-th request (0-based) with `replies[n]`; the last reply repeats.
    pub async fn start(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty(), "a script needs at least one reply");
        Self::with(move |n, _| replies[n.min(replies.len() - 1)].clone()).await
    }

    /// Answers each request with `script(n, &request)`, called exactly once
    /// per request, in order of arrival, with the headers (the body is not
    /// read yet; [`requests`](Self::requests) has it afterwards).
    pub async fn with(script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let task = {
            let requests = requests.clone();
            serve(
                listener,
                service_fn(move |req: Request<Incoming>| {
                    let requests = requests.clone();
                    let script = script.clone();
                    async move { handle(req, &requests, &*script).await }
                }),
            )
        };
        ScriptedServer {
            addr,
            requests,
            task,
        }
    }

    /// A `kneo::Client` with this server as its base URL, over `layer`.
    pub fn client(&self, layer: ClientLayer) -> kneo::Client {
        kneo::Client::builder()
            .base_url(self.url(""))
            .layer(layer)
            .build()
            .expect("client builds")
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("not poisoned").clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.requests.lock().expect("not poisoned").len()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves every connection `listener` accepts with `service` (HTTP/1.1, or
/// HTTP/2 with prior knowledge), each on a task of its own, until the task
/// returned is aborted (dropping it leaves it running).
pub fn serve<S, B>(listener: TcpListener, service: S) -> tokio::task::JoinHandle<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

#[derive(Debug)]
struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted hang-up")
    }
}

impl std::error::Error for Hangup {}

async fn handle(
    req: Request<Incoming>,
    requests: &Mutex<Vec<Recorded>>,
    script: &Script,
) -> Result<Response<Full<Bytes>>, Hangup> {
    let (parts, body) = req.into_parts();
    let recorded = Recorded {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: Bytes::new(),
        trailers: None,
    };
    // The script decides on the headers alone (once per request), so an
    // `early` reply can skip the body; the body is recorded afterwards.
    let n = {
        let mut all = requests.lock().expect("not poisoned");
        all.push(recorded.clone());
        all.len() - 1
    };
    let reply = script(n, &recorded);
    if !reply.early {
        if let Ok(collected) = body.collect().await {
            let mut all = requests.lock().expect("not poisoned");
            all[n].trailers = collected.trailers().cloned();
            all[n].body = collected.to_bytes();
        }
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if let Some(gate) = &reply.gate {
        gate.notified().await;
    }
    if reply.close {
        // hyper closes the connection without a response when the service fails.
        return Err(Hangup);
    }
    let mut res = Response::new(Full::new(reply.body));
    *res.status_mut() = reply.status;
    for (k, v) in &reply.headers {
        res.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
            http::HeaderValue::from_str(v).expect("test header value"),
        );
    }
    Ok(res)
}
