//! A payments API that charges once per `Idempotency-Key`, with kneo-server's
//! `IdempotencyLayer`, called through kneo's client.
//!
//! ```text
//! cargo run --example idempotent_server                               # records in memory
//! cargo run --example idempotent_server -- --redis redis://127.0.0.1/ # records in Redis, for a fleet
//! ```
//!
//! It starts the API on 127.0.0.1, makes a few calls to it, prints what came
//! back, and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use kneo::retry::Backoff;
use kneo::{Client, ClientLayer, ErrorKind};
use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
struct Charge {
    amount: u64,
    currency: String,
}

/// How many charges the API actually made.
#[derive(Debug, Default)]
struct Ledger {
    charges: AtomicU64,
}

/// `POST /payments`: a charge, which must never happen twice.
async fn create_payment(
    State(ledger): State<Arc<Ledger>>,
    Json(charge): Json<Charge>,
) -> (StatusCode, Json<Value>) {
    // Slow enough that a double-click arrives while it runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = ledger.charges.fetch_add(1, Ordering::SeqCst) + 1;
    let payment = json!({
        "id": format!("pay_{id}"),
        "amount": charge.amount,
        "currency": charge.currency,
        "status": "succeeded",
    });
    (StatusCode::CREATED, Json(payment))
}

/// The API. The layer is the only idempotency code: the handler knows nothing
/// about keys.
async fn app(
    ledger: Arc<Ledger>,
    redis: Option<&str>,
) -> Result<Router, Box<dyn std::error::Error>> {
    let routes = Router::new()
        .route("/payments", post(create_payment))
        .with_state(ledger);
    Ok(match redis {
        // One server: records in this process.
        None => routes.layer(IdempotencyLayer::new(MemoryStore::new()).require()),
        // A fleet behind a load balancer: every server shares the records.
        Some(url) => routes.layer(IdempotencyLayer::new(RedisStore::connect(url).await?).require()),
    })
}

async fn start(redis: Option<&str>) -> Result<(String, Arc<Ledger>), Box<dyn std::error::Error>> {
    let ledger = Arc::new(Ledger::default());
    let app = app(ledger.clone(), redis).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, ledger))
}

fn charge(key: &str, amount: u64) -> http::Request<Full<Bytes>> {
    let body = json!({"amount": amount, "currency": "eur"}).to_string();
    http::Request::post("/payments")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("invariant: a static request is valid")
}

async fn body_json(res: http::Response<hyper::body::Incoming>) -> Value {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(res.into_body(), 1 << 20)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let redis = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let (base, ledger) = start(redis).await?;
    println!(
        "payments API at {base}, records in {}\n",
        if redis.is_some() { "Redis" } else { "memory" }
    );
    let client = Client::builder()
        .base_url(&base)
        .api_key("sk_demo")
        .layer(ClientLayer::new().retry(
            kneo::retry::RetryLayer::new().backoff(Backoff::new().base(Duration::from_millis(50))),
        ))
        .build()?;

    // 1. kneo's client stamps a key on every POST: a plain call is safe to retry.
    let payment: Value = client
        .post_json("/payments", &json!({"amount": 1200, "currency": "eur"}))
        .await?;
    println!("1. POST /payments             -> {} charged", payment["id"]);

    // 2. A double-click: the same key twice at once. One charge; the second
    //    request is told 409 (in progress), kneo retries after Retry-After: 1,
    //    and gets the stored response.
    let (a, b) = tokio::join!(
        client.request(charge("order-42", 500)),
        client.request(charge("order-42", 500))
    );
    let (a, b) = (a?, b?);
    let replayed = |r: &http::Response<_>| r.headers().contains_key("idempotent-replayed");
    let (a_replayed, b_replayed) = (replayed(&a), replayed(&b));
    let (a, b) = (body_json(a).await, body_json(b).await);
    println!(
        "2. POST /payments x2 (same key) -> {} and {} (one replayed: {})",
        a["id"],
        b["id"],
        a_replayed != b_replayed
    );

    // 3. The same key with another amount is refused, not charged.
    let err = client
        .request(charge("order-42", 9_999))
        .await
        .expect_err("the key was used for another charge");
    println!(
        "3. POST /payments (key reused)  -> {:?}: {}",
        err.kind(),
        err.message()
    );
    assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);

    println!(
        "\n{} requests, {} charges.",
        4,
        ledger.charges.load(Ordering::SeqCst)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_double_submit_charges_once() {
        let (base, ledger) = start(None).await.expect("starts");
        let client = Client::builder()
            .base_url(&base)
            .layer(
                ClientLayer::new().retry(
                    kneo::retry::RetryLayer::new()
                        .backoff(Backoff::new().base(Duration::from_millis(1))),
                ),
            )
            .build()
            .expect("client");
        let (a, b) = tokio::join!(
            client.request(charge("k", 1)),
            client.request(charge("k", 1))
        );
        let (a, b) = (
            body_json(a.expect("a")).await,
            body_json(b.expect("b")).await,
        );
        assert_eq!(a, b);
        assert_eq!(ledger.charges.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_keyless_post_is_refused() {
        let (base, _) = start(None).await.expect("starts");
        let client = Client::builder()
            .base_url(&base)
            .layer(
                ClientLayer::new()
                    .idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])),
            )
            .build()
            .expect("client");
        let err = client
            .post_json::<_, Value>("/payments", &json!({"amount": 1, "currency": "eur"}))
            .await
            .expect_err("no key");
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(err.code(), "idempotency_key_missing");
    }
}
