//! Bound 2: 10,000 concurrent keyed requests against one `MemoryStore` with
//! `max_entries(1_000)`: the store never holds more than 1,000 entries, no
//! in-flight claim is evicted, and the heap does not grow with the keys seen.
//!
//! The app is an axum router behind `IdempotencyLayer`, driven in process
//! with `tower::ServiceExt::oneshot` (10,000 sockets would measure the
//! kernel, not the store). Its handler counts one effect per key and, when
//! the request says `x-hold`, blocks until the test opens the gate. The
//! store is wrapped in a `Store` that records `len()` after every call; on a
//! current-thread runtime a `MemoryStore` call never yields, so that is the
//! size at every change, and its maximum the true maximum.
//!
//! The heap is read from `peak_alloc`'s counting global allocator.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use kneo_server::{IdempotencyLayer, MemoryStore};
use kneo_tests::observed::{Observed, Step};
use peak_alloc::PeakAlloc;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The store's bound.
const MAX: usize = 1_000;
/// Requests in the first wave, all at once.
const WAVE: usize = 10_000;
/// In-flight claims held through the second wave.
const HOLDERS: usize = 500;
/// Keys: the first wave, then the holders, then the second wave.
const KEYS: usize = WAVE + HOLDERS + WAVE;
/// Requests in flight at once in the second wave: with the holders, below `MAX`.
const WAVE2_CONCURRENCY: usize = 256;

/// A guard against a hang, not a claim about speed.
const GUARD: Duration = Duration::from_secs(120);

/// A `MemoryStore` that records its size after every call.
#[derive(Clone)]
struct Watched {
    inner: MemoryStore,
    /// `inner`, observed: the store the layer is given.
    observed: Observed<MemoryStore>,
    max_len: Arc<AtomicUsize>,
    refused_full: Arc<AtomicUsize>,
}

impl Watched {
    fn new(inner: MemoryStore) -> Self {
        let max_len = Arc::new(AtomicUsize::new(0));
        let refused_full = Arc::new(AtomicUsize::new(0));
        let (len, full) = (max_len.clone(), refused_full.clone());
        let observed = Observed::new(inner.clone(), move |store: &MemoryStore, step| {
            len.fetch_max(store.len(), Ordering::SeqCst);
            if let Step::Claimed(Err(e)) = step {
                if e.is_full() {
                    full.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Watched {
            inner,
            observed,
            max_len,
            refused_full,
        }
    }

    fn max_len(&self) -> usize {
        self.max_len.load(Ordering::SeqCst)
    }
}

/// What the handler shares with the test.
#[derive(Clone)]
struct App {
    /// Effects per key number, allocated up front so the heap figures are the store's.
    effects: Arc<Vec<AtomicU32>>,
    /// Handlers running now.
    running: Arc<AtomicUsize>,
    /// `true`: held requests may finish.
    open: watch::Receiver<bool>,
}

impl App {
    fn effects(&self, n: usize) -> u32 {
        self.effects[n].load(Ordering::SeqCst)
    }
}

/// `POST /charges` with `Idempotency-Key: k-N`: one effect for key N, then
/// (with `x-hold`) waits for the gate; answers 201 `{"key":N,"effect":count}`.
async fn charge(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(n) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|k| k.strip_prefix("k-"))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < app.effects.len())
    else {
        return (StatusCode::BAD_REQUEST, "Idempotency-Key: k-N").into_response();
    };
    let effect = app.effects[n].fetch_add(1, Ordering::SeqCst) + 1;
    app.running.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key("x-hold") {
        let mut open = app.open.clone();
        // The sender lives as long as the test.
        let _ = open.wait_for(|open| *open).await;
    }
    app.running.fetch_sub(1, Ordering::SeqCst);
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        format!(r#"{{"key":{n},"effect":{effect}}}"#),
    )
        .into_response()
}

/// One answer, read whole.
#[derive(Debug)]
struct Answer {
    n: usize,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("key {}: {e}", self.n))
    }

    fn is_replay(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

/// Sends `POST /charges` for key `n`, held at the gate when `hold`.
async fn send(router: Router, n: usize, hold: bool) -> Answer {
    let mut req = Request::post("/charges")
        .header("idempotency-key", format!("k-{n}"))
        .header("content-type", "application/json");
    if hold {
        req = req.header("x-hold", "1");
    }
    let req = req
        .body(Body::from(format!(r#"{{"n":{n}}}"#)))
        .expect("valid request");
    let res = router.oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("an in-memory body").to_bytes();
    Answer {
        n,
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Spawns a held request for each key; answers arrive on the channel.
fn spawn_held(
    router: &Router,
    keys: std::ops::Range<usize>,
    answered: &mpsc::UnboundedSender<Answer>,
) {
    for n in keys {
        let router = router.clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            let _ = answered.send(send(router, n, true).await);
        });
    }
}

/// Waits until `done()` holds (a hang guard, not a timing claim).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(GUARD, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: still waiting after {GUARD:?}");
}

/// Takes every answer already in the channel.
fn drain(rx: &mut mpsc::UnboundedReceiver<Answer>) -> Vec<Answer> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn assert_first_run(a: &Answer) {
    assert_eq!(a.status, StatusCode::CREATED, "key {}", a.n);
    assert!(!a.is_replay(), "key {}: a first run is not a replay", a.n);
    let json = a.json();
    assert_eq!(json["key"], a.n, "key {}: its own response", a.n);
    assert_eq!(json["effect"], 1, "key {}: the first effect", a.n);
}

/// The same request again, after `first` completed: the stored response.
async fn assert_replayed(router: &Router, first: &Answer) {
    let again = send(router.clone(), first.n, true).await;
    assert_eq!(again.status, StatusCode::CREATED, "key {}", first.n);
    assert!(again.is_replay(), "key {}: a replay", first.n);
    assert_eq!(
        again.body, first.body,
        "key {}: byte for byte the first",
        first.n
    );
}

#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_keys_against_a_store_of_a_thousand() {
    let (gate, open) = watch::channel(false);
    let app = App {
        effects: Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect()),
        running: Arc::new(AtomicUsize::new(0)),
        open,
    };
    let store = Watched::new(MemoryStore::new().max_entries(MAX));
    let router = Router::new()
        .route("/charges", post(charge))
        .with_state(app.clone())
        .layer(IdempotencyLayer::new(store.observed.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let heap_empty = ALLOC.current_usage();

    // Wave 1: 10,000 distinct keys at once, every handler held.
    spawn_held(&router, 0..WAVE, &tx);
    let mut refused = Vec::new();
    until("every request admitted or refused", || {
        refused.extend(drain(&mut rx));
        app.running.load(Ordering::SeqCst) + refused.len() == WAVE
    })
    .await;
    let admitted = app.running.load(Ordering::SeqCst);
    println!(
        "bounds_store wave 1: {WAVE} concurrent keys, {admitted} admitted (in the handler), \
         {} refused; store len {}, max len {}",
        refused.len(),
        store.inner.len(),
        store.max_len()
    );
    assert_eq!(admitted, MAX, "as many claims as the store holds");
    assert_eq!(refused.len(), WAVE - MAX);
    assert_eq!(store.inner.len(), MAX);
    assert_eq!(store.max_len(), MAX, "never more than max_entries");
    assert_eq!(
        store.refused_full.load(Ordering::SeqCst),
        WAVE - MAX,
        "each refusal is the store's `is_full`"
    );
    // Full of live claims: a 503 problem with Retry-After, the handler never run.
    for a in &refused {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "key {}", a.n);
        assert_eq!(a.header("retry-after"), Some("1"), "key {}", a.n);
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            a.json()["code"],
            "idempotency_store_unavailable",
            "key {}",
            a.n
        );
        assert_eq!(app.effects(a.n), 0, "key {}: refused, so no effect", a.n);
    }
    let refused_keys: std::collections::HashSet<usize> = refused.iter().map(|a| a.n).collect();
    let admitted_keys: Vec<usize> = (0..WAVE).filter(|n| !refused_keys.contains(n)).collect();
    assert_eq!(admitted_keys.len(), MAX);
    for &n in &admitted_keys {
        assert_eq!(app.effects(n), 1, "key {n}: admitted, running once");
    }

    // Release: every admitted request completes with its own response, and
    // its retry is a replay with no new effect (its claim was never evicted).
    drop(refused);
    gate.send_replace(true);
    let mut completed = Vec::new();
    until("the admitted answers", || {
        completed.extend(drain(&mut rx));
        completed.len() == MAX
    })
    .await;
    for a in &completed {
        assert_first_run(a);
        assert_replayed(&router, a).await;
        assert_eq!(app.effects(a.n), 1, "key {}: replayed, not run again", a.n);
    }
    assert!(store.max_len() <= MAX);
    drop(completed);
    let heap_wave1 = ALLOC.current_usage();

    // Wave 2: 500 claims held in flight while 10,000 new keys go through the
    // 500 slots left. Only completed records may make room.
    gate.send_replace(false);
    let holders = WAVE..WAVE + HOLDERS;
    spawn_held(&router, holders.clone(), &tx);
    until("the holders in the handler", || {
        app.running.load(Ordering::SeqCst) == HOLDERS
    })
    .await;
    let wave2 = WAVE + HOLDERS..KEYS;
    let statuses: Vec<StatusCode> = futures_util::stream::iter(wave2.clone())
        .map(|n| {
            let router = router.clone();
            async move {
                let a = send(router, n, false).await;
                assert_first_run(&a);
                a.status
            }
        })
        .buffer_unordered(WAVE2_CONCURRENCY)
        .collect()
        .await;
    assert_eq!(statuses.len(), WAVE, "every second-wave key ran");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED));
    drop(statuses);
    // Every holder's claim survived: a retry now is told it is in flight.
    for n in holders.clone() {
        let busy = send(router.clone(), n, true).await;
        assert_eq!(busy.status, StatusCode::CONFLICT, "key {n}: still claimed");
        assert_eq!(busy.json()["code"], "idempotency_key_in_use", "key {n}");
        assert_eq!(app.effects(n), 1, "key {n}: running once");
    }
    gate.send_replace(true);
    let mut held = Vec::new();
    until("the holders' answers", || {
        held.extend(drain(&mut rx));
        held.len() == HOLDERS
    })
    .await;
    for a in &held {
        assert_first_run(a);
        assert_replayed(&router, a).await;
    }
    drop(held);
    let heap_wave2 = ALLOC.current_usage();

    // No key ran twice; the refused never ran; the bound held throughout.
    let over: Vec<usize> = (0..KEYS).filter(|n| app.effects(*n) > 1).collect();
    assert!(over.is_empty(), "keys with more than one effect: {over:?}");
    let ran = (0..KEYS).filter(|n| app.effects(*n) == 1).count();
    assert_eq!(ran, MAX + HOLDERS + WAVE);
    assert_eq!(store.inner.len(), MAX);
    assert_eq!(store.max_len(), MAX, "never more than max_entries");

    // 10,500 more keys did not cost the heap what the first 1,000 records did.
    let first = heap_wave1.saturating_sub(heap_empty);
    let grown = heap_wave2 as i64 - heap_wave1 as i64;
    println!(
        "bounds_store heap: {heap_empty} B with the store empty, {heap_wave1} B holding \
         {MAX} records after {WAVE} keys (+{first} B), {heap_wave2} B after {} keys more \
         ({grown:+} B); store max len {}",
        HOLDERS + WAVE,
        store.max_len()
    );
    assert!(
        grown < first as i64,
        "the heap grew {grown} B over {} more keys, more than the {first} B the first \
         {MAX} records took: records are not being evicted",
        HOLDERS + WAVE
    );
}
