//! kneo in two minutes: an embedded mock API on 127.0.0.1, and every way a call
//! can end, typed.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Nothing to install: the mock API runs in this process, and enforces
//! `Idempotency-Key` with kneo-server's `IdempotencyLayer`, so the tour shows
//! both halves working together. The retry log (`kneo::retry` at INFO) goes
//! to stderr.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use kneo::retry::{Backoff, RetryLayer};
use kneo::{Attempts, Client, ClientLayer, Error, ErrorKind};
use kneo_server::{IdempotencyLayer, MemoryStore};
use serde::Deserialize;
use serde_json::{json, Value};

const API_KEY: &str = "demo-key";

#[derive(Debug, Deserialize)]
struct Run {
    id: u64,
    name: String,
    status: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("kneo=info")
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let (base, mock) = start_mock_api().await?;
    println!("kneo quickstart: mock API at {base}\n");

    let client = Client::builder()
        .base_url(&base)
        .api_key(API_KEY)
        .layer(
            ClientLayer::new()
                .retry(RetryLayer::new().backoff(Backoff::new().base(Duration::from_millis(50)))),
        )
        .build()?;

    // 1. Success: a typed model back.
    let run: Run = client.get_json("/runs/1").await?;
    println!(
        "1. GET /runs/1   -> ok: run {} {:?} is {}",
        run.id, run.name, run.status
    );

    // 2. 404 -> NotFound.
    let err = client
        .get_json::<Run>("/runs/7")
        .await
        .expect_err("run 7 does not exist");
    show(2, "GET /runs/7  ", &err, ErrorKind::NotFound);

    // 3. 401 -> Auth, with a revoked key.
    let revoked = Client::builder()
        .base_url(&base)
        .api_key("revoked-key")
        .build()?;
    let err = revoked
        .get_json::<Run>("/runs/1")
        .await
        .expect_err("the key is revoked");
    show(3, "GET /runs/1  ", &err, ErrorKind::Auth);

    // 4. 429 with Retry-After: 1, then success: the wait honours the hint.
    let started = Instant::now();
    let res = client.request(get_request("/busy")).await?;
    let attempts = res
        .extensions()
        .get::<Attempts>()
        .expect("the retry layer records attempts");
    let (count, waited) = (attempts.count(), attempts.total_wait());
    println!(
        "4. GET /busy     -> ok after {count} attempts: 429 said Retry-After: 1, kneo waited {:.2}s (call took {:.2}s)",
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // 5. A POST answered 503, 503, 201: retried safely, one key on every attempt.
    let created: Value = client
        .post_json("/runs", &json!({"name": "nightly"}))
        .await?;
    let keys = mock.keys_seen.lock().expect("mock state").clone();
    let same = keys.windows(2).all(|w| w[0] == w[1]);
    println!(
        "5. POST /runs    -> ok: created run {} after {} attempts, Idempotency-Key {} on every attempt: {}",
        created["id"],
        keys.len(),
        keys.first().map_or("?", String::as_str),
        if same { "same" } else { "DIFFERENT" }
    );

    // 6. The same key reused with a different payload -> IdempotencyMismatch
    //    (the server's IdempotencyLayer answers 422 without running the handler).
    let key = keys.first().cloned().unwrap_or_default();
    let post_with_key = |body: &'static [u8]| {
        http::Request::post("/runs")
            .header("idempotency-key", key.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
    };
    let err = client
        .request(post_with_key(br#"{"name":"weekly"}"#)?)
        .await
        .expect_err("payload differs");
    show(6, "POST /runs   ", &err, ErrorKind::IdempotencyMismatch);
    println!(
        "   is_conflict() groups it with Conflict: {}",
        err.is_conflict()
    );

    // 7. The same key and payload again: the stored response, replayed.
    let res = client
        .request(post_with_key(br#"{"name":"nightly"}"#)?)
        .await?;
    let replayed = res.headers().contains_key("idempotent-replayed");
    println!(
        "7. POST /runs    -> {} again, Idempotent-Replayed: {replayed}; the handler ran {} times in all",
        res.status(),
        mock.keys_seen.lock().expect("mock state").len()
    );

    println!("\nEvery failure above is one kneo::Error; match on err.kind().");
    Ok(())
}

fn get_request(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .body(Full::default())
        .expect("invariant: a static path is a valid URI")
}

fn show(step: u32, call: &str, err: &Error, expected: ErrorKind) {
    let verdict = if err.kind() == expected {
        ""
    } else {
        "  (unexpected kind!)"
    };
    println!("{step}. {call} -> {:?}: {err}{verdict}", err.kind());
}

/// The mock API's memory.
#[derive(Default)]
struct Mock {
    /// `/busy` calls so far.
    busy_calls: Mutex<u32>,
    /// The Idempotency-Key of every POST /runs the handler ran.
    keys_seen: Mutex<Vec<String>>,
}

async fn start_mock_api() -> std::io::Result<(String, Arc<Mock>)> {
    let mock = Arc::new(Mock::default());
    let app = Router::new()
        .route("/runs/{id}", get(get_run))
        .route("/busy", get(busy))
        .route("/runs", post(create_run))
        .with_state(mock.clone())
        // Keyed POSTs run once; replays, 409 while in flight, 422 on a reused
        // key. GETs pass through.
        .layer(IdempotencyLayer::new(MemoryStore::new()).require());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    // Echo the caller's X-Request-ID, as real APIs do.
    let app = Router::new()
        .nest("/v1", app)
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, mock))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {API_KEY}"))
}

async fn get_run(Path(id): Path<u64>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "API key is invalid or revoked",
        );
    }
    if id != 1 {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("run {id} does not exist"),
        );
    }
    Json(json!({"id": 1, "name": "nightly", "status": "done"})).into_response()
}

async fn busy(State(mock): State<Arc<Mock>>) -> Response {
    let mut calls = mock.busy_calls.lock().expect("mock state");
    *calls += 1;
    if *calls == 1 {
        let mut res = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "slow down",
        );
        res.headers_mut()
            .insert("retry-after", "1".parse().expect("valid"));
        return res;
    }
    Json(json!({"ok": true})).into_response()
}

async fn create_run(State(mock): State<Arc<Mock>>, headers: HeaderMap) -> Response {
    // The layer in front guarantees a key, and that a retry after success never
    // gets here; a 503 releases the key, so kneo's retries run again.
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let attempt = {
        let mut seen = mock.keys_seen.lock().expect("mock state");
        seen.push(key.to_owned());
        seen.len()
    };
    if attempt < 3 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "warming up",
        );
    }
    let created = json!({"id": 2, "name": "nightly", "status": "queued"});
    (StatusCode::CREATED, Json(created)).into_response()
}
