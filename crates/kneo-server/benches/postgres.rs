//! Keyed POSTs through the transactional layer
//! (`IdempotencyLayer::new(Transactional::new(pool))`) against the same
//! handler doing the same insert in its own transaction without the layer,
//! on loopback and a Postgres started here; first requests and replays; and
//! the SQL statements and transactions per request, counted by Postgres.
//!
//! ```text
//! cargo bench -p kneo-server --features postgres --bench postgres
//! ```
//!
//! Bounded: 6 interleaved rounds of 3 scenarios × 1 s (about 20 s, plus
//! `initdb`), 127.0.0.1 only. Each round runs every scenario once, so drift
//! hits all of them alike; the table shows medians over the rounds, and
//! "vs bare" is the median of the per-round ratios. A load loop rather than
//! criterion, as `benches/idempotency.rs`: the quantity is a server's
//! throughput under concurrent load.
//!
//! Postgres: the tests' server (`kneo_tests::postgres`, a dev-dependency):
//! `initdb` and `postgres` from `PATH` or `/usr/lib/postgresql/*/bin` (as
//! the `postgres` user through `setpriv` when run as root), `fsync=off`,
//! here with `pg_stat_statements` preloaded. Without Postgres the bench
//! prints `skipped: …` and exits (under `CI=true` it panics, as the tests
//! do); without `pg_stat_statements` it measures throughput and says the
//! statement counts were skipped.
//!
//! Counting: `pg_stat_statements`' `calls` (utility statements such as
//! `BEGIN`, `SET`, `COMMIT` and `ROLLBACK` included), reset before the
//! first round's measured run of each scenario and read after it, divided by
//! the requests the run sent (warm-up included). Executed statements do not
//! depend on the load or the machine. Round trips are fewer than statements
//! where one message carries two (the layer's `BEGIN; SET LOCAL
//! lock_timeout`).

mod common;

use std::collections::BTreeMap;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use common::{client, load, load_once, print_table, runtime, serve, Keys, Run};
use common::{CONCURRENCY, MEASURE, ROUNDS};
use kneo_server::transactional::{IdempotentTransaction, Transactional};
use kneo_server::{IdempotencyLayer, PostgresStore};
use kneo_tests::postgres::PostgresServer;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const LEDGER: &str = "\
CREATE TABLE IF NOT EXISTS ledger (
    id bigserial PRIMARY KEY,
    idem_key text NOT NULL,
    amount bigint NOT NULL
)";

const INSERT: &str = "INSERT INTO ledger (idem_key, amount) VALUES ($1, $2) RETURNING id";

fn created(id: i64) -> Response {
    let body = format!(r#"{{"ledger_id":{id},"status":"succeeded"}}"#);
    let json = [(http::header::CONTENT_TYPE, "application/json")];
    (StatusCode::CREATED, json, body).into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// The key the request was sent with (the bare handler has no layer to read it).
fn key_of(headers: &http::HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// Without the layer: the same insert in the handler's own transaction.
async fn bare(State(pool): State<PgPool>, headers: http::HeaderMap, body: Bytes) -> Response {
    let amount = i64::try_from(body.len()).unwrap_or(i64::MAX);
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return failed(e),
    };
    let id: i64 = match sqlx::query_scalar(INSERT)
        .bind(key_of(&headers))
        .bind(amount)
        .fetch_one(&mut *tx)
        .await
    {
        Ok(id) => id,
        Err(e) => return failed(e),
    };
    match tx.commit().await {
        Ok(()) => created(id),
        Err(e) => failed(e),
    }
}

/// Behind the layer: the insert in the request's transaction, which the
/// layer commits with the record.
async fn layered(
    Extension(tx): Extension<IdempotentTransaction>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let amount = i64::try_from(body.len()).unwrap_or(i64::MAX);
    let mut tx = match tx.lock().await {
        Ok(tx) => tx,
        Err(e) => return failed(e),
    };
    match sqlx::query_scalar(INSERT)
        .bind(key_of(&headers))
        .bind(amount)
        .fetch_one(&mut **tx)
        .await
    {
        Ok(id) => created(id),
        Err(e) => failed(e),
    }
}

/// Statement executions by kind over one measured run
/// (`pg_stat_statements`), and the requests the run sent.
#[derive(Default)]
struct Counted {
    statements: BTreeMap<&'static str, u64>,
    requests: u64,
}

/// A short name for a statement `pg_stat_statements` recorded.
fn kind(query: &str) -> &'static str {
    let q = query.trim_start().to_ascii_lowercase();
    if q.starts_with("begin") {
        "BEGIN"
    } else if q.starts_with("set") {
        "SET LOCAL"
    } else if q.starts_with("commit") {
        "COMMIT"
    } else if q.starts_with("rollback") {
        "ROLLBACK"
    } else if q.starts_with("insert into ledger") {
        "INSERT ledger"
    } else if q.starts_with("insert into kneo_idempotency") {
        "INSERT claim"
    } else if q.starts_with("select") && q.contains("kneo_idempotency") {
        "SELECT record"
    } else if q.starts_with("update kneo_idempotency") {
        "UPDATE record"
    } else {
        "other"
    }
}

/// Empties `pg_stat_statements` (it counts each statement as it ends, in
/// shared memory: no collector delay).
async fn reset(admin: &PgPool) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(admin)
        .await
        .expect("reset pg_stat_statements");
}

/// The statements since [`reset`], leaving out the bench's own reads of
/// the statistics.
async fn count(admin: &PgPool, requests: u64) -> Counted {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, calls FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'",
    )
    .fetch_all(admin)
    .await
    .expect("read pg_stat_statements");
    let mut counted = Counted {
        requests,
        ..Counted::default()
    };
    for (query, calls) in rows {
        *counted.statements.entry(kind(&query)).or_default() += u64::try_from(calls).unwrap_or(0);
    }
    counted
}

fn main() {
    // With pg_stat_statements first; without it if it is not installed.
    let preload = ["shared_preload_libraries=pg_stat_statements"];
    let (pg, statements) = match PostgresServer::start_with(&preload) {
        Ok(Some(pg)) => (pg, true),
        // Not installed: `start_with` said so.
        Ok(None) => return,
        Err(_) => match PostgresServer::start() {
            Some(pg) => (pg, false),
            None => return,
        },
    };
    if !statements {
        println!("pg_stat_statements could not be loaded: statement counts skipped");
    }
    runtime().block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(CONCURRENCY).expect("small") + 8)
            .connect(&pg.url())
            .await
            .expect("postgres is up");
        PostgresStore::new(pool.clone())
            .migrate()
            .await
            .expect("the kneo_idempotency migration");
        sqlx::query(LEDGER)
            .execute(&pool)
            .await
            .expect("the ledger table");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&pg.url())
            .await
            .expect("postgres is up");
        if statements {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&admin)
                .await
                .expect("pg_stat_statements");
        }
        let client = client();
        let bare_url = serve(
            Router::new()
                .route("/pay", post(bare))
                .with_state(pool.clone()),
        )
        .await;
        let layered_url = serve(
            Router::new()
                .route("/pay", post(layered))
                .layer(IdempotencyLayer::new(Transactional::new(pool.clone()))),
        )
        .await;

        let scenarios = [
            ("1 bare: own transaction", Keys::Fresh, &bare_url, "bare"),
            ("2 transactional, first requests", Keys::Fresh, &layered_url, "first"),
            ("3 transactional, replays", Keys::Replay, &layered_url, "replay"),
        ];
        let mut results: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
        let mut counts: BTreeMap<&str, Counted> = BTreeMap::new();
        for round in 0..ROUNDS {
            for (label, keys, url, name) in scenarios {
                let name = format!("{name}{round}");
                if keys == Keys::Replay {
                    // The replays' records first, outside the count.
                    load_once(&client, url, &name).await;
                }
                // Counted in the first round only: the counts do not vary.
                let counting = round == 0 && statements;
                if counting {
                    reset(&admin).await;
                }
                let run = load(&client, url, keys, &name).await;
                if counting {
                    counts.insert(label, count(&admin, run.sent).await);
                }
                results.entry(label).or_default().push(run);
            }
        }

        println!(
            "\nkeyed POSTs, {CONCURRENCY} concurrent connections, loopback, Postgres fsync=off, median of {ROUNDS} rounds x {:.1} s\n",
            MEASURE.as_secs_f64()
        );
        print_table(&results, "1 bare: own transaction");
        if !counts.is_empty() {
            println!("\nSQL statements per request, counted by Postgres (pg_stat_statements calls over every request of the first round):\n");
        }
        for (label, counted) in &counts {
            let per = |n: u64| n as f64 / counted.requests.max(1) as f64;
            let total: u64 = counted.statements.values().sum();
            let kinds = counted
                .statements
                .iter()
                .map(|(kind, n)| format!("{kind} {:.2}", per(*n)))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "- {}: {} requests; {:.2} statements: {kinds}",
                &label[2..],
                counted.requests,
                per(total),
            );
        }
    });
}
