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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use kneo_server::idempotency::IdempotencyKey;
use kneo_server::transactional::{IdempotentTransaction, Transactional};
use kneo_server::IdempotencyLayer;
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
        }
    }

    /// The axum app behind `IdempotencyLayer::new(Transactional::new(pool))`.
    pub fn router(self, transactional: Transactional) -> axum::Router {
        axum::Router::new()
            .route("/pay", post(pay))
            .route("/busy", post(pay))
            .route("/commit-fails", post(pay))
            .route("/charge", post(pay))
            .with_state(self)
            .layer(IdempotencyLayer::new(transactional))
    }
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
    let id = match insert(&tx, key.as_str().to_owned(), amount, None).await {
        Ok(id) => id,
        Err(res) => return res,
    };
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
    let body = serde_json::json!({"ledger_id": id, "run": run}).to_string();
    let json = [(http::header::CONTENT_TYPE, "application/json")];
    (StatusCode::CREATED, json, body).into_response()
}
