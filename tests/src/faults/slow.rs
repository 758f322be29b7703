//! [`SlowServer`]: the hang-up workload's server. Its handler takes its time
//! (it waits, records one effect, waits again, then streams its response in
//! a few chunks), so a caller can hang up at every point of it. Behind
//! kneo-server's `IdempotencyLayer` in process, or bare as the upstream of
//! `kneo proxy --idempotency`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use kneo_server::{IdempotencyLayer, Store};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::server::Effects;

/// The chunks of every response body.
pub(super) const CHUNKS: usize = 4;

/// One logical request, as its body says it (`POST /charges`, JSON): which
/// request it is and how the handler paces it. The same bytes on every
/// attempt, so a retry matches the first request's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Charge {
    /// The logical request; effects are counted per `id`.
    pub id: u64,
    /// Milliseconds the handler waits before its effect.
    #[serde(default)]
    pub pre_ms: u64,
    /// Milliseconds it waits after its effect, before the response head.
    #[serde(default)]
    pub post_ms: u64,
    /// Milliseconds between the response body's chunks.
    #[serde(default)]
    pub gap_ms: u64,
}

impl Charge {
    /// Request `id`, paced `pre_ms`, `post_ms`, `gap_ms`.
    pub fn new(id: u64, pre_ms: u64, post_ms: u64, gap_ms: u64) -> Self {
        Charge {
            id,
            pre_ms,
            post_ms,
            gap_ms,
        }
    }

    /// The request body.
    pub fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("invariant: a Charge serializes"))
    }

    /// The response body's chunks for this request's `effect`-th run: JSON
    /// lines naming the request, the run and the chunk, padded so the body
    /// takes a few TCP reads.
    pub fn chunks(&self, effect: u32) -> Vec<Bytes> {
        (0..CHUNKS)
            .map(|part| {
                let pad = "x".repeat(96 + part * 16);
                Bytes::from(format!(
                    "{{\"id\":{},\"effect\":{effect},\"part\":{part},\"pad\":\"{pad}\"}}\n",
                    self.id
                ))
            })
            .collect()
    }

    /// The whole response body of the one run this request may have.
    pub fn expected(&self) -> Bytes {
        Bytes::from(self.chunks(1).concat())
    }
}

/// How far the handler got for one request, over all its runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Runs {
    /// Runs that began (the body was read).
    pub started: u32,
    /// Runs that produced their response head (past the effect and the wait).
    pub answered: u32,
    /// Runs whose body was streamed to its last chunk.
    pub streamed: u32,
}

#[derive(Debug, Clone)]
struct App {
    effects: Arc<Effects>,
    runs: Arc<Mutex<HashMap<u64, Runs>>>,
}

impl App {
    fn update(&self, id: u64, f: impl FnOnce(&mut Runs)) {
        let mut runs = self.runs.lock().expect("not poisoned");
        f(runs.entry(id).or_default());
    }
}

/// `POST /charges` with a [`Charge`]: waits `pre_ms`, applies one effect for
/// its `id` (and its `Idempotency-Key`, if any), waits `post_ms`, answers 201
/// and streams [`Charge::chunks`] `gap_ms` apart.
async fn charge(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(charge) = serde_json::from_slice::<Charge>(&body) else {
        return (StatusCode::BAD_REQUEST, "a JSON body with an \"id\"").into_response();
    };
    let id = charge.id;
    app.update(id, |r| r.started += 1);
    tokio::time::sleep(Duration::from_millis(charge.pre_ms)).await;
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let effect = app.effects.apply(id, key);
    tokio::time::sleep(Duration::from_millis(charge.post_ms)).await;
    app.update(id, |r| r.answered += 1);
    let gap = Duration::from_millis(charge.gap_ms);
    let chunks = charge.chunks(effect).into_iter().enumerate();
    let last = CHUNKS - 1;
    let stream = futures_util::stream::unfold((chunks, app), move |(mut chunks, app)| async move {
        let (n, chunk) = chunks.next()?;
        if n > 0 {
            tokio::time::sleep(gap).await;
        }
        if n == last {
            app.update(id, |r| r.streamed += 1);
        }
        Some((Ok::<_, Infallible>(chunk), (chunks, app)))
    });
    (
        StatusCode::CREATED,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// An axum app on `127.0.0.1:0` serving `POST /charges` (HTTP/1, keep-alive
/// on). Dropped, it stops accepting and drops its connections (and with
/// them, where nothing else drives them, their handlers).
#[derive(Debug)]
pub struct SlowServer {
    addr: SocketAddr,
    runs: Arc<Mutex<HashMap<u64, Runs>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowServer {
    /// The handler behind `layer`, recording into `effects`.
    pub async fn start<St: Store>(layer: IdempotencyLayer<St>, effects: Arc<Effects>) -> Self {
        let (app, runs) = Self::app(effects);
        Self::serve(app.layer(layer), runs).await
    }

    /// The handler alone (no idempotency layer): the upstream of a `kneo
    /// proxy --idempotency`, which enforces the keys in front of it.
    pub async fn bare(effects: Arc<Effects>) -> Self {
        let (app, runs) = Self::app(effects);
        Self::serve(app, runs).await
    }

    fn app(effects: Arc<Effects>) -> (Router, Arc<Mutex<HashMap<u64, Runs>>>) {
        let runs = Arc::new(Mutex::new(HashMap::new()));
        let app = App {
            effects,
            runs: runs.clone(),
        };
        let router = Router::new()
            .route("/charges", post(charge))
            .with_state(app);
        (router, runs)
    }

    async fn serve(router: Router, runs: Arc<Mutex<HashMap<u64, Runs>>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let svc = TowerToHyperService::new(router.clone());
                        connections.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        SlowServer { addr, runs, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How far the handler got for request `id`.
    pub fn runs(&self, id: u64) -> Runs {
        let runs = self.runs.lock().expect("not poisoned");
        runs.get(&id).copied().unwrap_or_default()
    }
}
