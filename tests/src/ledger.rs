//! A payments ledger behind kneo-server's transactional idempotency layer:
//! each keyed `POST /pay` inserts one `ledger` row in the request's own
//! transaction, which the layer commits together with the response. Served
//! in-process by the tests and as a process (`pg_server`) by the kill tests.
//!
//! | path | does |
//! |---|---|
//! | `POST /pay[?sleep_ms=N]` | inserts a row (the key, the body's length), waits N ms, `201 {"ledger_id":…,"run":n}` |
//! | `POST /pay` with `x-stall: 1` | inserts, reports it (see [`Ledger::on_inserted`]), then never answers |
//! | `POST /busy` | inserts, then answers `503`: rolled back |
//! | `POST /commit-fails` | inserts two rows a deferred unique constraint refuses at the commit |
//! | `POST /charge` | calls the upstream with the key's child key `charge-card`, inserts; its first run panics after the call |
//! | `POST /pay` with `x-kill-at: POINT` | with [`Ledger::kill_points`], stalls at `POINT` the first time the key gets there (see [`KillPoint`]) |
//!
//! [`Ledger::autocommit_router`] is the same ledger without the transaction:
//! the handler inserts with autocommit, and the layer keeps its records in
//! any [`Store`] (the design the transactional layer replaces, for the kill
//! workload's comparison).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Request as AxumRequest, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use kneo_server::idempotency::IdempotencyKey;
use kneo_server::transactional::{IdempotentTransaction, Transactional};
use kneo_server::{IdempotencyLayer, Store};
use sqlx::PgPool;

/// The ledger table (and the layer's, through `PostgresStore::migrate`).
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS ledger (
    id bigserial PRIMARY KEY,
    idem_key text NOT NULL,
    amount bigint NOT NULL,
    note text,
    CONSTRAINT ledger_note_unique UNIQUE (note) DEFERRABLE INITIALLY DEFERRED
)";

/// Creates the layer's table and the ledger.
pub async fn migrate(pool: &PgPool) {
    kneo_server::PostgresStore::new(pool.clone())
        .migrate()
        .await
        .expect("the kneo_idempotency migration");
    sqlx::query(SCHEMA)
        .execute(pool)
        .await
        .expect("the ledger table");
}

/// Rows in the ledger for `key`.
pub async fn rows(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger WHERE idem_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("count ledger rows")
}

/// The app's shared state.
#[derive(Clone)]
pub struct Ledger {
    /// Handler runs so far.
    pub runs: Arc<AtomicUsize>,
    /// Called with the key once a stalled request's row is inserted.
    pub on_inserted: Arc<dyn Fn(&str) + Send + Sync>,
    /// The upstream `/charge` calls, when there is one.
    pub upstream: Option<kneo::Client>,
    /// Where `x-kill-at` requests stall, when set.
    pub kill_points: Option<Arc<KillPoints>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger that reports stalls to `on_inserted`.
    pub fn new(on_inserted: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Ledger {
            runs: Arc::new(AtomicUsize::new(0)),
            on_inserted: Arc::new(on_inserted),
            upstream: None,
            kill_points: None,
        }
    }

    /// Makes requests sent with `x-kill-at` stall at their point (see
    /// [`KillPoints`]).
    pub fn with_kill_points(mut self, kill_points: KillPoints) -> Self {
        self.kill_points = Some(Arc::new(kill_points));
        self
    }

    /// The axum app behind `IdempotencyLayer::new(Transactional::new(pool))`.
    pub fn router(self, transactional: Transactional) -> axum::Router {
        let router = axum::Router::new()
            .route("/pay", post(pay))
            .route("/busy", post(pay))
            .route("/commit-fails", post(pay))
            .route("/charge", post(pay))
            .with_state(self.clone())
            .layer(IdempotencyLayer::new(transactional));
        self.answered_point(router)
    }

    /// With kill points, `router` behind the [`KillPoint::Answered`] stall.
    fn answered_point(self, router: axum::Router) -> axum::Router {
        if self.kill_points.is_some() {
            router.layer(axum::middleware::from_fn_with_state(self, answered))
        } else {
            router
        }
    }

    /// The same `POST /pay` without the transaction: the handler inserts its
    /// row with autocommit on `pool`, and `layer` keeps the records in its
    /// store. A process killed between the insert and the record's
    /// completion leaves a row whose key is free again once the claim's
    /// lease ends: its retry inserts a second row.
    pub fn autocommit_router<St: Store>(
        self,
        pool: PgPool,
        layer: IdempotencyLayer<St>,
    ) -> axum::Router {
        let router = axum::Router::new()
            .route("/pay", post(pay_autocommit))
            .with_state(Autocommit {
                ledger: self.clone(),
                pool,
            })
            .layer(layer);
        self.answered_point(router)
    }
}

/// Where a request sent with `x-kill-at: POINT` stalls (once per key, across
/// every process sharing the [`KillPoints`] directory), so that a test can
/// `SIGKILL` the process there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KillPoint {
    /// In the handler, before its insert (the key claimed, nothing written).
    Handler,
    /// After the handler's insert: before the commit (transactional), or
    /// before the record is completed (autocommit and a store).
    Inserted,
    /// Outside the idempotency layer, once it has answered (committed, or
    /// recorded): the response is not yet sent.
    Answered,
}

impl KillPoint {
    /// Every point, in order.
    pub const ALL: [KillPoint; 3] = [KillPoint::Handler, KillPoint::Inserted, KillPoint::Answered];

    /// The `x-kill-at` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KillPoint::Handler => "handler",
            KillPoint::Inserted => "inserted",
            KillPoint::Answered => "answered",
        }
    }

    /// The point named `name`.
    pub fn parse(name: &str) -> Option<KillPoint> {
        KillPoint::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// Stalls requests at their `x-kill-at` point, the first time their key gets
/// there: the first process to create `DIR/POINT-KEY` calls `on_stall` and
/// never answers. Later attempts with the key pass (the marker is there).
pub struct KillPoints {
    dir: PathBuf,
    on_stall: Box<OnStall>,
}

/// What [`KillPoints`] tells of each stall.
type OnStall = dyn Fn(KillPoint, &str) + Send + Sync;

impl std::fmt::Debug for KillPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KillPoints")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl KillPoints {
    /// Markers in `dir` (which exists); `on_stall` is told each stall.
    pub fn new(
        dir: impl Into<PathBuf>,
        on_stall: impl Fn(KillPoint, &str) + Send + Sync + 'static,
    ) -> Self {
        KillPoints {
            dir: dir.into(),
            on_stall: Box::new(on_stall),
        }
    }

    /// Never returns when the request asks to stall at `point` and is the
    /// first with `key` to get there.
    async fn reached(&self, point: KillPoint, headers: &HeaderMap, key: &str) {
        let asked = headers
            .get("x-kill-at")
            .is_some_and(|v| v.as_bytes() == point.as_str().as_bytes());
        // A key that is not a plain file name never stalls.
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if asked
            && plain
            && std::fs::create_dir(self.dir.join(format!("{}-{key}", point.as_str()))).is_ok()
        {
            (self.on_stall)(point, key);
            std::future::pending::<()>().await;
        }
    }
}

impl Ledger {
    async fn kill_point(&self, point: KillPoint, headers: &HeaderMap, key: &str) {
        if let Some(points) = &self.kill_points {
            points.reached(point, headers, key).await;
        }
    }
}

/// [`KillPoint::Answered`]: outside the idempotency layer.
async fn answered(State(ledger): State<Ledger>, req: AxumRequest, next: Next) -> Response {
    let headers = req.headers().clone();
    let res = next.run(req).await;
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        ledger.kill_point(KillPoint::Answered, &headers, key).await;
    }
    res
}

/// The state of [`Ledger::autocommit_router`].
#[derive(Clone)]
struct Autocommit {
    ledger: Ledger,
    pool: PgPool,
}

/// `POST /pay` with autocommit: the row is committed as soon as it is inserted.
async fn pay_autocommit(
    State(app): State<Autocommit>,
    Extension(key): Extension<IdempotencyKey>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = app.ledger.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let amount = i64::try_from(body.len()).unwrap_or(i64::MAX);
    app.ledger
        .kill_point(KillPoint::Handler, &headers, key.as_str())
        .await;
    let id: i64 = match sqlx::query_scalar(
        "INSERT INTO ledger (idem_key, amount) VALUES ($1, $2) RETURNING id",
    )
    .bind(key.as_str())
    .bind(amount)
    .fetch_one(&app.pool)
    .await
    {
        Ok(id) => id,
        Err(e) => return failed("insert", e),
    };
    app.ledger
        .kill_point(KillPoint::Inserted, &headers, key.as_str())
        .await;
    created(id, run)
}

fn created(id: i64, run: usize) -> Response {
    let body = serde_json::json!({"ledger_id": id, "run": run}).to_string();
    let json = [(http::header::CONTENT_TYPE, "application/json")];
    (StatusCode::CREATED, json, body).into_response()
}

fn query(uri: &Uri, name: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn failed(what: &str, e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}")).into_response()
}

async fn insert(
    tx: &IdempotentTransaction,
    key: String,
    amount: i64,
    note: Option<String>,
) -> Result<i64, Response> {
    let mut tx = tx.lock().await.map_err(|e| failed("transaction", e))?;
    sqlx::query_scalar(
        "INSERT INTO ledger (idem_key, amount, note) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(key)
    .bind(amount)
    .bind(note)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| failed("insert", e))
}

async fn pay(
    State(ledger): State<Ledger>,
    Extension(key): Extension<IdempotencyKey>,
    tx: IdempotentTransaction,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = ledger.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let amount = i64::try_from(body.len()).unwrap_or(i64::MAX);
    if uri.path() == "/charge" {
        let Some(upstream) = &ledger.upstream else {
            return failed("charge", "no upstream");
        };
        let req = Request::post("/charges")
            .header("idempotency-key", key.child_key("charge-card"))
            .body(Full::new(body.clone()))
            .expect("valid request");
        if let Err(e) = upstream.request(req).await {
            return failed("upstream", e);
        }
        if run == 1 {
            // Killed after the upstream call, before the commit.
            panic!("the first run dies after charging the card");
        }
    }
    if uri.path() == "/commit-fails" {
        for _ in 0..2 {
            if let Err(res) = insert(
                &tx,
                key.as_str().to_owned(),
                amount,
                Some("twice".to_owned()),
            )
            .await
            {
                return res;
            }
        }
        return StatusCode::CREATED.into_response();
    }
    ledger
        .kill_point(KillPoint::Handler, &headers, key.as_str())
        .await;
    let id = match insert(&tx, key.as_str().to_owned(), amount, None).await {
        Ok(id) => id,
        Err(res) => return res,
    };
    ledger
        .kill_point(KillPoint::Inserted, &headers, key.as_str())
        .await;
    if headers.get("x-stall").is_some_and(|v| v == "1") {
        (ledger.on_inserted)(key.as_str());
        std::future::pending::<()>().await;
    }
    if let Some(ms) = query(&uri, "sleep_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if uri.path() == "/busy" {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    created(id, run)
}
