//! [`FaultServer`]: an axum app behind kneo-server's `IdempotencyLayer` whose
//! handler records one effect per call, per request and per key.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use kneo_server::{IdempotencyLayer, Store};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The effects the handler applied, shared by every server of a workload.
#[derive(Debug, Default)]
pub struct Effects {
    by_request: Mutex<HashMap<u64, u32>>,
    by_key: Mutex<HashMap<String, u32>>,
    /// Who applied each effect, when a server process reported it.
    by_instance: Mutex<HashMap<u64, Vec<String>>>,
    unavailable: AtomicU64,
    journal: bool,
}

impl Effects {
    /// Effects that are also written to standard output, one line each
    /// (`effect ID KEY`, flushed before the response is sent): a server
    /// process reports them this way, so they outlive its being killed.
    pub fn journaled() -> Self {
        Effects {
            journal: true,
            ..Effects::default()
        }
    }

    /// Records one effect a server process reported (a journal line) as
    /// applied by `instance`.
    pub fn record_from(&self, instance: &str, id: u64, key: Option<&str>) {
        self.apply(id, key);
        let mut by_instance = self.by_instance.lock().expect("not poisoned");
        by_instance.entry(id).or_default().push(instance.to_owned());
    }

    /// The instances that applied request `id` (server processes only).
    pub fn instances_of(&self, id: u64) -> Vec<String> {
        let by_instance = self.by_instance.lock().expect("not poisoned");
        by_instance.get(&id).cloned().unwrap_or_default()
    }

    /// `503` answers the servers sent (the idempotency store unavailable:
    /// the request was refused, not run).
    pub fn unavailable(&self) -> u64 {
        self.unavailable.load(Ordering::SeqCst)
    }

    /// Counts one `503` answer (journaled as `unavailable`).
    pub fn add_unavailable(&self) {
        if self.journal {
            journal("unavailable");
        }
        self.unavailable.fetch_add(1, Ordering::SeqCst);
    }

    /// Effects applied for the logical request `id` (the `id` body field).
    pub fn of_request(&self, id: u64) -> u32 {
        let by_request = self.by_request.lock().expect("not poisoned");
        by_request.get(&id).copied().unwrap_or(0)
    }

    /// Every effect applied.
    pub fn total(&self) -> u64 {
        let by_request = self.by_request.lock().expect("not poisoned");
        by_request.values().map(|n| u64::from(*n)).sum()
    }

    /// Requests (by `id`) applied more than once.
    pub fn duplicate_requests(&self) -> Vec<(u64, u32)> {
        let by_request = self.by_request.lock().expect("not poisoned");
        let mut dups: Vec<_> = by_request
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect();
        dups.sort_unstable();
        dups
    }

    /// Idempotency keys applied more than once.
    pub fn duplicate_keys(&self) -> Vec<(String, u32)> {
        let by_key = self.by_key.lock().expect("not poisoned");
        let mut dups: Vec<_> = by_key
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        dups.sort_unstable();
        dups
    }

    pub(super) fn apply(&self, id: u64, key: Option<&str>) -> u32 {
        if self.journal {
            journal(&format!("effect {id} {}", key.unwrap_or("-")));
        }
        if let Some(key) = key {
            let mut by_key = self.by_key.lock().expect("not poisoned");
            *by_key.entry(key.to_owned()).or_default() += 1;
        }
        let mut by_request = self.by_request.lock().expect("not poisoned");
        let n = by_request.entry(id).or_default();
        *n += 1;
        *n
    }
}

/// Writes one journal line to stdout, flushed.
fn journal(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A request the handler stalls on, once across every server sharing the
/// marker: the first server to create the marker directory prints
/// `entered ID` (flushed) and never finishes, so a test can kill its process
/// mid-handler, before the effect.
#[derive(Debug, Clone)]
pub struct Stall {
    /// The logical request (`id` body field) to stall on.
    pub id: u64,
    /// A path no server has created yet; creating it is the atomic "first".
    pub marker: PathBuf,
}

#[derive(Debug, Clone)]
struct App {
    effects: Arc<Effects>,
    stall: Option<Stall>,
    /// Set once this server stalled: every handler entered after it stalls
    /// too, before its effect, so a kill lands mid-handler for all of them
    /// (none is caught between its effect and the store's record).
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

/// `POST /charges` with `{"id": N}`: applies one effect for `N` (and for its
/// `Idempotency-Key`, if any), answers 201 `{"id": N, "effect": count}`.
async fn charge(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(id) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_u64())
    else {
        return (StatusCode::BAD_REQUEST, "a JSON body with an \"id\"").into_response();
    };
    if app.frozen.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if let Some(stall) = app.stall.as_ref().filter(|s| s.id == id) {
        if std::fs::create_dir(&stall.marker).is_ok() {
            app.frozen.store(true, Ordering::SeqCst);
            journal(&format!("entered {id}"));
            std::future::pending::<()>().await;
        }
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let effect = app.effects.apply(id, key);
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        serde_json::json!({"id": id, "effect": effect}).to_string(),
    )
        .into_response()
}

/// An axum app on `127.0.0.1:0`: `POST /charges` behind `IdempotencyLayer`.
/// HTTP/1 with keep-alive off, so each connection carries one request (the
/// [`FaultRelay`](super::FaultRelay) reads a response to end of stream).
/// Dropped, it stops accepting and drops its connections.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    /// Serves the app behind `layer`, recording into `effects`.
    pub async fn start<St: Store>(layer: IdempotencyLayer<St>, effects: Arc<Effects>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::serve(listener, layer, effects, None).await
    }

    /// Serves the app behind `layer` on `listener`, stalling on `stall`.
    pub async fn serve<St: Store>(
        listener: TcpListener,
        layer: IdempotencyLayer<St>,
        effects: Arc<Effects>,
        stall: Option<Stall>,
    ) -> Self {
        let counted = effects.clone();
        let router = axum::Router::new()
            .route("/charges", post(charge))
            .with_state(App {
                effects,
                stall,
                frozen: Arc::default(),
            })
            .layer(layer)
            .layer(tower::util::MapResponseLayer::new(move |res: Response| {
                if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                    counted.add_unavailable();
                }
                res
            }));
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
                                .keep_alive(false)
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        FaultServer { addr, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
