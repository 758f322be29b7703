//! Black-box tests of `kneo proxy --idempotency`: every answer, whoever made
//! it (the upstream, a replay, the idempotency layer), is logged and counted
//! once, with this request's id; the upstream's own id is logged beside it.
//!
//! Timing is only ever asserted from below; the timeouts around awaits are
//! guards against a hang, not claims.

use kneo_tests::guarded;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use kneo_tests::proxy_client::{send, Got};
use kneo_tests::redis::RedisServer;
use kneo_tests::sidecar::Sidecar;
use kneo_tests::{Reply, ScriptedServer};
use serde_json::Value;
use tokio::sync::Notify;

/// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 --admin 127.0.0.1:0
/// --idempotency STORE`, once its startup line is out.
async fn sidecar(upstream: &str, store: &str) -> Sidecar {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    Sidecar::start_with_admin(kneo, upstream, &["--idempotency", store])
        .await
        .expect("kneo proxy starts")
}

/// A `kneo_proxy_requests_total` series from `/metrics` (0 when absent).
async fn requests_total(proxy: &Sidecar, outcome: &str, class: &str) -> f64 {
    let series = format!("kneo_proxy_requests_total{{outcome=\"{outcome}\",class=\"{class}\"}}");
    proxy.metric(&series).await
}

/// A keyed POST of `body` to `/charges`, with `id` as its `X-Request-ID`
/// when given.
fn post(proxy: &Sidecar, key: &str, body: &'static str, id: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::post(proxy.url("/charges")).header("idempotency-key", key);
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    req.body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid")
}

/// A log line's field as a string.
fn field<'v>(log: &'v Value, name: &str) -> Option<&'v str> {
    log[name].as_str()
}

/// An answer the idempotency layer made: a problem with `code`, carrying
/// this request's id (the header, the `request_id` member, the log line's)
/// and `Via`; logged as `idempotency` with no attempts.
fn assert_layer_problem(got: &Got, log: &Value, status: u16, code: &str) {
    assert_eq!(got.status.as_u16(), status);
    let problem = got.json();
    assert_eq!(problem["code"], code, "{problem}");
    let id = got.header("x-request-id").expect("an x-request-id");
    assert_eq!(problem["request_id"], id, "{problem}");
    assert_eq!(got.header("via"), Some("1.1 kneo"));
    assert_eq!(log["outcome"], "idempotency", "{log}");
    assert_eq!(log["status"], status, "{log}");
    assert_eq!(log["attempts"], 0, "{log}");
    assert_eq!(field(log, "request_id"), Some(id), "{log}");
    assert!(log.get("upstream_request_id").is_none(), "{log}");
}

// A replay is logged and counted as such, and answers with the retry's own
// id; the first request's id is under `Original-Request`.
#[tokio::test]
async fn a_replay_is_logged_and_counted_with_this_requests_id() {
    let server = ScriptedServer::start(vec![Reply::json(201, r#"{"charge":1}"#)]).await;
    let mut proxy = sidecar(&server.url(""), "memory").await;

    let first = send(post(&proxy, "charge-1", "{\"amount\":5}", Some("first-1"))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("x-request-id"), Some("first-1"));
    let log = proxy.next_log().await;
    assert_eq!(log["outcome"], "upstream", "{log}");
    assert_eq!(log["request_id"], "first-1");
    assert_eq!(log["attempts"], 1);
    assert!(
        log.get("upstream_request_id").is_none(),
        "an echo of ours is not the upstream's own id: {log}"
    );

    let retry = send(post(&proxy, "charge-1", "{\"amount\":5}", Some("retry-2"))).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body, "byte for byte");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("x-request-id"), Some("retry-2"));
    assert_eq!(retry.header("original-request"), Some("first-1"));
    assert_eq!(retry.header("via"), Some("1.1 kneo"), "one entry, not two");
    let log = proxy.next_log().await;
    assert_eq!(log["outcome"], "replayed", "{log}");
    assert_eq!(log["request_id"], "retry-2");
    assert_eq!(log["status"], 201);
    assert_eq!(log["attempts"], 0);
    assert_eq!(log["path"], "/charges");
    assert_eq!(log["method"], "POST");
    assert!(log.get("upstream_request_id").is_none(), "{log}");

    // A retry without an id of its own gets one made, the same in its
    // answer and its log line (not the first request's).
    let bare = send(post(&proxy, "charge-1", "{\"amount\":5}", None)).await;
    let made = bare.header("x-request-id").expect("an id was made");
    assert_ne!(made, "first-1");
    assert_eq!(bare.header("original-request"), Some("first-1"));
    let log = proxy.next_log().await;
    assert_eq!(log["outcome"], "replayed", "{log}");
    assert_eq!(field(&log, "request_id"), Some(made));

    assert_eq!(server.count(), 1, "the upstream ran it once");
    assert_eq!(requests_total(&proxy, "upstream", "2xx").await, 1.0);
    assert_eq!(requests_total(&proxy, "replayed", "2xx").await, 2.0);
}

// The same key with another body is the layer's 422: logged, counted, with
// this request's id and Via. So is an invalid key's 400.
#[tokio::test]
async fn the_layers_own_problems_are_logged_and_counted() {
    let server = ScriptedServer::start(vec![Reply::json(201, "{}")]).await;
    let mut proxy = sidecar(&server.url(""), "memory").await;
    send(post(&proxy, "charge-2", "{\"amount\":5}", Some("first-1"))).await;
    assert_eq!(proxy.next_log().await["outcome"], "upstream");

    let other = send(post(&proxy, "charge-2", "{\"amount\":6}", Some("other-3"))).await;
    assert_eq!(other.header("x-request-id"), Some("other-3"));
    let log = proxy.next_log().await;
    assert_layer_problem(&other, &log, 422, "idempotency_key_mismatch");

    // No id from the caller: the one made is in the answer and the log.
    let bare = send(post(&proxy, "charge-2", "{\"amount\":7}", None)).await;
    let log = proxy.next_log().await;
    assert_layer_problem(&bare, &log, 422, "idempotency_key_mismatch");

    let invalid = send(post(&proxy, "", "{}", Some("bad-key-4"))).await;
    assert_eq!(invalid.header("x-request-id"), Some("bad-key-4"));
    let log = proxy.next_log().await;
    assert_layer_problem(&invalid, &log, 400, "idempotency_key_invalid");

    assert_eq!(server.count(), 1);
    assert_eq!(requests_total(&proxy, "idempotency", "4xx").await, 3.0);
    assert_eq!(requests_total(&proxy, "upstream", "2xx").await, 1.0);
}

// A retry while the first still runs is the layer's 409, logged before the
// first's own line.
#[tokio::test]
async fn a_409_while_the_first_runs_is_logged() {
    // The upstream holds the first until the 409 is logged.
    let gate = Arc::new(Notify::new());
    let server = ScriptedServer::start(vec![Reply::json(201, "{}").gated(gate.clone())]).await;
    let mut proxy = sidecar(&server.url(""), "memory").await;
    let first = tokio::spawn(send(post(&proxy, "charge-3", "{}", Some("slow-1"))));
    guarded("the first request upstream", async {
        while server.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let busy = send(post(&proxy, "charge-3", "{}", Some("busy-2"))).await;
    assert_eq!(busy.header("x-request-id"), Some("busy-2"));
    assert!(busy.header("retry-after").is_some());
    let log = proxy.next_log().await;
    assert_layer_problem(&busy, &log, 409, "idempotency_key_in_use");
    gate.notify_one();

    let first = first.await.expect("the first request");
    assert_eq!(first.status, StatusCode::CREATED);
    let log = proxy.next_log().await;
    assert_eq!(log["outcome"], "upstream", "{log}");
    assert_eq!(log["request_id"], "slow-1");
    assert_eq!(requests_total(&proxy, "idempotency", "4xx").await, 1.0);
}

// The upstream's own X-Request-ID reaches the caller unchanged, and the log
// has both ids; a replay of that answer keeps it, and logs it again.
#[tokio::test]
async fn the_upstreams_own_request_id_is_logged_beside_ours() {
    let server = ScriptedServer::start(vec![
        Reply::json(201, "{}").header("x-request-id", "req_upstream1")
    ])
    .await;
    let mut proxy = sidecar(&server.url(""), "memory").await;

    let get = Request::get(proxy.url("/runs/7"))
        .header("x-request-id", "mine-1")
        .body(Full::default())
        .expect("valid");
    let got = send(get).await;
    assert_eq!(got.header("x-request-id"), Some("req_upstream1"));
    assert_eq!(
        server.requests()[0].header("x-request-id").as_deref(),
        Some("mine-1"),
        "the upstream got ours"
    );
    let log = proxy.next_log().await;
    assert_eq!(log["outcome"], "upstream", "{log}");
    assert_eq!(log["request_id"], "mine-1");
    assert_eq!(log["upstream_request_id"], "req_upstream1");

    send(post(&proxy, "charge-4", "{}", Some("first-2"))).await;
    let log = proxy.next_log().await;
    assert_eq!(log["request_id"], "first-2");
    assert_eq!(log["upstream_request_id"], "req_upstream1");
    let replay = send(post(&proxy, "charge-4", "{}", Some("retry-3"))).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        replay.header("x-request-id"),
        Some("req_upstream1"),
        "an id the upstream set is part of its answer"
    );
    assert_eq!(replay.header("original-request"), None);
    let log = proxy.next_log().await;
    assert_eq!(log["outcome"], "replayed", "{log}");
    assert_eq!(log["request_id"], "retry-3");
    assert_eq!(log["upstream_request_id"], "req_upstream1");
    assert_eq!(server.count(), 2);
}

// The store-unavailable 503 is the layer's answer too: logged and counted
// as a 5xx, the request never sent.
#[tokio::test]
async fn a_store_outage_503_is_logged_and_counted() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = ScriptedServer::start(vec![Reply::json(201, "{}")]).await;
    let mut proxy = sidecar(&server.url(""), &redis.url()).await;
    redis.stop();

    let got = send(post(&proxy, "charge-5", "{}", Some("outage-1"))).await;
    assert_eq!(got.header("x-request-id"), Some("outage-1"));
    let log = proxy.next_log().await;
    assert_layer_problem(&got, &log, 503, "idempotency_store_unavailable");
    assert_eq!(server.count(), 0);
    assert_eq!(requests_total(&proxy, "idempotency", "5xx").await, 1.0);
}
