//! The payments API of `idempotent_server`, with its charges in Postgres and
//! the idempotency record committed **in the same transaction** as the
//! charge (kneo-server's transactional layer): a server killed at any point
//! leaves either both or neither, so a retry charges exactly once.
//!
//! ```text
//! cargo run --example postgres_payments -- postgres://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! It creates its tables if missing, starts the API on 127.0.0.1, charges
//! twice with one key and once with another through kneo's client, prints
//! the ledger, and exits.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use kneo::{Client, ClientLayer};
use kneo_server::transactional::{IdempotentTransaction, Transactional};
use kneo_server::{IdempotencyLayer, PostgresStore, ProblemResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;

#[derive(Debug, Deserialize)]
struct Charge {
    amount: i64,
    currency: String,
}

const CHARGES: &str = "\
CREATE TABLE IF NOT EXISTS charges (
    id bigserial PRIMARY KEY,
    amount bigint NOT NULL,
    currency text NOT NULL
)";

/// `POST /payments`: one row in `charges`, in the request's transaction.
async fn create_payment(
    tx: IdempotentTransaction,
    Json(charge): Json<Charge>,
) -> Result<(StatusCode, Json<Value>), ProblemResponse> {
    let failed = |what: &str| {
        ProblemResponse::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
            .detail(what.to_owned())
    };
    let mut tx = tx.lock().await.map_err(|_| failed("no transaction"))?;
    let id: i64 =
        sqlx::query_scalar("INSERT INTO charges (amount, currency) VALUES ($1, $2) RETURNING id")
            .bind(charge.amount)
            .bind(charge.currency.clone())
            .fetch_one(&mut **tx)
            .await
            .map_err(|_| failed("the charge could not be written"))?;
    // Committed by the layer, with this response, after the handler returns.
    let payment =
        json!({"id": format!("pay_{id}"), "amount": charge.amount, "currency": charge.currency});
    Ok((StatusCode::CREATED, Json(payment)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --example postgres_payments -- postgres://USER@HOST:PORT/DB");
        std::process::exit(2);
    };
    let pool = PgPool::connect(&url).await?;
    // The schema is created here, once, never on the request path.
    PostgresStore::new(pool.clone()).migrate().await?;
    sqlx::query(CHARGES).execute(&pool).await?;

    let app = Router::new()
        .route("/payments", post(create_payment))
        .layer(IdempotencyLayer::new(Transactional::new(pool.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let client = Client::builder()
        .base_url(format!("http://{addr}"))
        .layer(ClientLayer::new().attempt_timeout(Duration::from_secs(5)))
        .build()?;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&pool)
        .await?;
    let body = Bytes::from_static(br#"{"amount":1000,"currency":"eur"}"#);
    for (label, key) in [
        ("first", "order-1"),
        ("retry", "order-1"),
        ("another", "order-2"),
    ] {
        let key = format!("{key}-{}", std::process::id());
        let req = http::Request::post("/payments")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Full::new(body.clone()))?;
        let res = client.request(req).await?;
        let replayed = res.headers().contains_key("idempotent-replayed");
        let body = client.read_bytes(res).await?;
        println!(
            "{label:8} replayed={replayed:5} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&pool)
        .await?;
    println!("charges made: {} (three calls, two keys)", after - before);
    assert_eq!(after - before, 2, "the retry did not charge again");
    Ok(())
}
