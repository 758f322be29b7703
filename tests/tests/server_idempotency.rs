//! kneo-server's `IdempotencyLayer` end to end: real servers (an axum app and
//! a plain hyper service) on 127.0.0.1, called through kneo's own client.
//!
//! Every behaviour is one generic `async fn` over the store, run once with
//! `MemoryStore` and once with `RedisStore` against a real `redis-server`
//! (skipped with a printed reason when it is not installed; a failure under
//! `CI=true`). Redis-only scenarios (command counts, two servers, outage) are
//! at the end.

mod server_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use kneo::ErrorKind;
use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore, Store};
use server_support::*;

/// Behaviour 5–7: a keyed POST whose response is lost after the handler ran
/// is retried by kneo's client (same key) and answered from the record.
async fn lost_response_is_replayed_not_rerun<St: Store>(store: St) {
    for app in [App::Axum, App::Hyper] {
        let server = TestServer::start(app, IdempotencyLayer::new(store.clone())).await;
        server.state.lose_next.store(true, Ordering::SeqCst);
        let client = server.client("key-1", fast());
        // No key given: kneo's client stamps one and keeps it for the retry.
        let reply = send(&client, Method::POST, "/pay", None, r#"{"amount":10}"#)
            .await
            .expect("the retry gets the stored response");
        assert_eq!(server.runs(), 1, "{app:?}: the handler ran once");
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(reply.replayed(), "{app:?}: the retry was a replay");
        assert_eq!(reply.json()["run"], 1);
        assert_eq!(
            reply.headers["x-handler"], "yes",
            "stored headers are replayed"
        );
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(
            server.state.count(201),
            2,
            "the lost response and the replay"
        );
    }
}

/// Behaviour 5: 50 concurrent requests with one key: one run, the others are
/// told 409 and, through kneo's retries, end with the same stored response.
async fn concurrent_requests_with_one_key_run_once<St: Store>(store: St) {
    for app in [App::Axum, App::Hyper] {
        let server = TestServer::start(app, IdempotencyLayer::new(store.clone())).await;
        // `409`s are retried after their `Retry-After: 1`: enough attempts
        // that a slow machine's first run cannot outlast them.
        let client = server.client("key-1", fast().max_attempts(10));
        let key = format!("concurrent-{app:?}");
        let replies =
            join_all((0..50).map(|_| post(&client, "/pay?sleep_ms=300", &key, "{}"))).await;
        assert_eq!(server.runs(), 1, "{app:?}: one handler run for 50 requests");
        let first = replies[0]
            .as_ref()
            .expect("every request ends well")
            .body
            .clone();
        for reply in &replies {
            let reply = reply.as_ref().expect("every request ends well");
            assert_eq!(reply.status, StatusCode::CREATED);
            assert_eq!(reply.body, first, "the same stored response");
        }
        assert!(server.state.count(409) >= 1, "the others were told to wait");
        assert_eq!(server.state.count(201), 50);
    }
}

/// Behaviour 5: while the first request runs, the same key is `409` with
/// `Retry-After: 1`, which kneo maps to a retryable `Conflict`.
async fn in_flight_key_is_409_in_use<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "busy", "{}").await })
    };
    server.state.blocked.notified().await;
    let err = post(&client, "/block", "busy", "{}")
        .await
        .expect_err("still running");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.is_retryable(), "kneo retries a key in use");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_problem(&err, 409, "idempotency_key_in_use");
    // Another request on the busy key is a mismatch, not "in use".
    let err = post(&client, "/block", "busy", r#"{"other":1}"#)
        .await
        .expect_err("different request");
    assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
    server.state.gate.notify_one();
    let first = first.await.expect("task").expect("first completes");
    assert_eq!(first.json()["run"], 1);
    assert_eq!(server.runs(), 1);
}

/// Behaviour 4: the same key with another body, path or method → 422 →
/// `IdempotencyMismatch`, not retried, handler not called.
async fn same_key_other_request_is_a_mismatch<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", fast());
    post(&client, "/pay", "mm", r#"{"amount":10}"#)
        .await
        .expect("first");
    let err = post(&client, "/pay", "mm", r#"{"amount":99}"#)
        .await
        .expect_err("another body");
    assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
    assert!(err.is_conflict());
    assert_eq!(err.attempts(), 1, "a mismatch is not retried");
    assert_problem(&err, 422, "idempotency_key_mismatch");
    let err = post(&client, "/pay?currency=eur", "mm", r#"{"amount":10}"#)
        .await
        .expect_err("another query");
    assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
    let err = send(
        &client,
        Method::PATCH,
        "/pay",
        Some("mm"),
        r#"{"amount":10}"#,
    )
    .await
    .expect_err("another method");
    assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
    assert_eq!(server.runs(), 1);
}

/// Behaviours 5–6: a handler that outlives its lease loses the key; a retry
/// runs; the stale handler's late completion is refused by the fencing token.
async fn lease_expiry_and_fencing<St: Store>(store: St) {
    // Long enough that the retry's own claim (never renewed either) outlives
    // its claim, run and completion on a loaded machine.
    let lease = Duration::from_secs(2);
    // `max_hold` zero: the claim is never renewed, as for a wedged process.
    let layer = IdempotencyLayer::new(store)
        .lease(lease)
        .max_hold(Duration::ZERO);
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let stale = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "lease", "{}").await })
    };
    server.state.blocked.notified().await;
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let retry = post(&client, "/block", "lease", "{}")
        .await
        .expect("after the lease a retry runs");
    assert_eq!(retry.json()["run"], 2);
    assert!(!retry.replayed());

    server.state.gate.notify_one();
    let stale = stale
        .await
        .expect("task")
        .expect("the stale caller still gets its response");
    assert_eq!(stale.json()["run"], 1);

    let replay = post(&client, "/block", "lease", "{}")
        .await
        .expect("replay");
    assert!(replay.replayed());
    assert_eq!(
        replay.json()["run"],
        2,
        "the stale completion did not overwrite the newer record"
    );
    assert_eq!(server.runs(), 2);
}

/// Behaviour 6: 503 and 429 say "not processed": the claim is released.
async fn a_503_or_429_releases_the_claim<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    for code in [503u16, 429] {
        let key = format!("release-{code}");
        for _ in 0..2 {
            let err = post(&client, &format!("/status/{code}"), &key, "{}")
                .await
                .expect_err("an error status");
            assert_eq!(err.status().map(|s| s.as_u16()), Some(code));
        }
    }
    assert_eq!(server.runs(), 4, "each ran twice: nothing was stored");
}

/// Behaviours 6–7: a 500 is stored and replayed (Stripe), not run again.
async fn a_500_is_stored_and_replayed<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    for _ in 0..2 {
        let err = post(&client, "/status/500", "five-hundred", "{}")
            .await
            .expect_err("500");
        assert_eq!(err.kind(), ErrorKind::Server);
        assert_eq!(err.body().as_json().expect("json")["run"], 1);
    }
    assert_eq!(server.runs(), 1);
}

/// Behaviour 6: the client hangs up mid-request. The request runs on to its
/// end on its own task (it may already have had its effect), the key stays
/// busy meanwhile, and the retry gets its response: never a second run.
async fn a_dropped_request_runs_to_completion<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let impatient = {
        let client = server.client("key-1", once());
        tokio::spawn(async move { post(&client, "/block", "dropped", "{}").await })
    };
    // Hang up once the handler runs: dropping the call closes its connection.
    server.state.blocked.notified().await;
    impatient.abort();
    assert!(impatient.await.expect_err("aborted").is_cancelled());
    // The abandoned request is still running: its key is in use.
    let err = post(&server.client("key-1", once()), "/block", "dropped", "{}")
        .await
        .expect_err("in use");
    assert_problem(&err, 409, "idempotency_key_in_use");
    server.state.gate.notify_one();
    let client = server.client("key-1", fast().max_attempts(10));
    let reply = post(&client, "/block", "dropped", "{}")
        .await
        .expect("the retry gets the abandoned request's response");
    assert!(reply.replayed());
    assert_eq!(reply.json()["run"], 1);
    assert_eq!(server.runs(), 1, "the handler ran once");
}

/// Behaviour 6: a panic in the handler keeps the key (the handler began, so
/// it may have had its effect): the caller's connection closes, and a retry
/// is told `410`, never run again.
async fn a_panicking_handler_keeps_its_key<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    let err = post(&client, "/panic", "panic", "{}")
        .await
        .expect_err("no response");
    assert_eq!(err.kind(), ErrorKind::Network);
    let err = post(&client, "/panic", "panic", "{}")
        .await
        .expect_err("not run again");
    assert_problem(&err, 410, "idempotency_response_not_stored");
    assert_eq!(server.runs(), 1, "run once");
}

/// Behaviour 6: the service returning `Err` keeps the key, as a panic does.
async fn a_failing_service_keeps_its_key<St: Store>(store: St) {
    let server = TestServer::start(App::Hyper, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    let err = post(&client, "/err", "err", "{}")
        .await
        .expect_err("no response");
    assert_eq!(err.kind(), ErrorKind::Network);
    let err = post(&client, "/err", "err", "{}")
        .await
        .expect_err("not run again");
    assert_problem(&err, 410, "idempotency_response_not_stored");
    assert_eq!(server.runs(), 1);
}

/// Behaviour 6: a handler slower than its lease keeps its claim (the layer
/// renews it while the handler runs): a retry in the middle is `409`, the
/// one after it the replay; one run.
async fn a_handler_slower_than_its_lease_keeps_its_claim<St: Store>(store: St) {
    let lease = Duration::from_secs(2);
    let layer = IdempotencyLayer::new(store).lease(lease);
    let server = TestServer::start(App::Axum, layer).await;
    let first = {
        let client = server.client("key-1", once());
        tokio::spawn(async move { post(&client, "/block", "slow", "{}").await })
    };
    server.state.blocked.notified().await;
    // Three leases: without renewal the claim would long be gone. The handler
    // is held until the retry has been answered.
    tokio::time::sleep(lease * 3).await;
    let err = post(&server.client("key-1", once()), "/block", "slow", "{}")
        .await
        .expect_err("still running");
    assert_problem(&err, 409, "idempotency_key_in_use");
    assert_eq!(server.runs(), 1, "the retry did not run");
    server.state.gate.notify_one();
    let first = first.await.expect("joined").expect("the first run answers");
    assert_eq!(first.json()["run"], 1);
    let retry = post(&server.client("key-1", once()), "/block", "slow", "{}")
        .await
        .expect("replayed");
    assert!(retry.replayed());
    assert_eq!(retry.json()["run"], 1);
    assert_eq!(server.runs(), 1);
}

/// Behaviour 3: two callers (different `Authorization`) with one key do not
/// see each other's records.
async fn callers_do_not_share_keys<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let alice = server.client("alice", once());
    let bob = server.client("bob", once());
    let a = post(&alice, "/pay", "shared", "{}").await.expect("alice");
    let b = post(&bob, "/pay", "shared", "{}").await.expect("bob");
    assert_eq!(
        (a.json()["run"].clone(), b.json()["run"].clone()),
        (1.into(), 2.into())
    );
    assert!(!b.replayed(), "bob did not get alice's response");
    let a2 = post(&alice, "/pay", "shared", "{}")
        .await
        .expect("alice again");
    let b2 = post(&bob, "/pay", "shared", "{}").await.expect("bob again");
    assert!(a2.replayed() && b2.replayed());
    assert_eq!(a2.body, a.body);
    assert_eq!(b2.body, b.body);
    // Bob reusing the key with another body only conflicts with his own record.
    let err = post(&bob, "/pay", "shared", r#"{"x":1}"#)
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), ErrorKind::IdempotencyMismatch);
    assert_eq!(server.runs(), 2);
}

/// Behaviour 1: other methods pass through untouched, key or not; so do
/// unkeyed POSTs by default.
async fn other_methods_and_unkeyed_requests_pass_through<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client(
        "key-1",
        once().idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])),
    );
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        for _ in 0..2 {
            let reply = send(&client, method.clone(), "/pay", Some("pass"), "")
                .await
                .expect("passes");
            assert!(!reply.replayed(), "{method}");
        }
    }
    for _ in 0..2 {
        send(&client, Method::POST, "/pay", None, "{}")
            .await
            .expect("unkeyed POST passes");
    }
    assert_eq!(server.runs(), 8);
}

/// Behaviour 1: the methods are configurable.
async fn methods_are_configurable<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).methods([Method::PUT]);
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let first = send(&client, Method::PUT, "/pay", Some("put"), "{}")
        .await
        .expect("put");
    let again = send(&client, Method::PUT, "/pay", Some("put"), "{}")
        .await
        .expect("put");
    assert!(!first.replayed() && again.replayed(), "PUT is enforced");
    for _ in 0..2 {
        let post = post(&client, "/pay", "post", "{}").await.expect("post");
        assert!(!post.replayed(), "POST is no longer enforced");
    }
    assert_eq!(server.runs(), 3);
}

/// Behaviour 2: a quoted and a bare key are the same key; repeated, empty,
/// long or non-ASCII keys are 400 problems.
async fn key_syntax<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    let first = post(&client, "/pay", "\"k-8e03\"", "{}")
        .await
        .expect("quoted");
    let again = post(&client, "/pay", "k-8e03", "{}").await.expect("bare");
    assert!(!first.replayed());
    assert!(again.replayed(), "the same key, bare");

    let too_long = "k".repeat(256);
    for bad in ["", "\"\"", "\"unterminated", too_long.as_str()] {
        let err = post(&client, "/pay", bad, "{}").await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Status, "{bad:?}");
        assert_problem(&err, 400, "idempotency_key_invalid");
    }
    let twice = Request::post("/pay")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let err = client.request(twice).await.expect_err("two keys");
    assert_problem(&err, 400, "idempotency_key_invalid");
    assert_eq!(server.runs(), 1);
}

/// Behaviour 2: with `.require()`, a POST without a key is a 400 problem.
async fn required_key<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store).require()).await;
    let client = server.client(
        "key-1",
        once().idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])),
    );
    let err = send(&client, Method::POST, "/pay", None, "{}")
        .await
        .expect_err("no key");
    assert_eq!(err.kind(), ErrorKind::Status);
    assert_problem(&err, 400, "idempotency_key_missing");
    send(&client, Method::GET, "/pay", None, "")
        .await
        .expect("GET is not concerned");
    // kneo's client stamps a key by default, so the same POST goes through.
    let stamped = server.client("key-1", once());
    send(&stamped, Method::POST, "/pay", None, "{}")
        .await
        .expect("keyed");
    assert_eq!(server.runs(), 2);
}

/// Behaviour 4: a body over `max_body` is 413, the handler not called.
async fn body_over_max_body_is_413<St: Store>(store: St) {
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store).max_body(16)).await;
    let client = server.client("key-1", once());
    let err = post(&client, "/pay", "big-body", r#"{"amount":1000000000}"#)
        .await
        .expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::Status);
    assert_problem(&err, 413, "request_body_too_large");
    post(&client, "/pay", "small-body", "{}")
        .await
        .expect("small enough");
    assert_eq!(server.runs(), 1);
}

/// Behaviour 8: a response over `max_response` reaches its caller in full;
/// later requests with the key get 410, and it never runs again.
async fn a_response_too_big_to_store<St: Store>(store: St) {
    let server =
        TestServer::start(App::Axum, IdempotencyLayer::new(store).max_response(4096)).await;
    let client = server.client("key-1", once());
    for (path, key) in [
        ("/big?bytes=10000", "big-chunked"),
        ("/big?bytes=10000&exact=1", "big-exact"),
    ] {
        let first = post(&client, path, key, "{}").await.expect("first");
        assert_eq!(first.body.len(), 10_000, "{path}: the whole response");
        let err = post(&client, path, key, "{}")
            .await
            .expect_err("not stored");
        assert_eq!(err.kind(), ErrorKind::Status);
        assert!(!err.is_retryable());
        assert_problem(&err, 410, "idempotency_response_not_stored");
    }
    let small = post(&client, "/big?bytes=4000", "small", "{}")
        .await
        .expect("small");
    let replay = post(&client, "/big?bytes=4000", "small", "{}")
        .await
        .expect("replay");
    assert!(replay.replayed());
    assert_eq!(replay.body, small.body);
    assert_eq!(server.runs(), 3);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(kneo_server::MemoryStore::new()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(redis) = super::RedisServer::start() else { return };
                    super::$name(super::redis_store(&redis).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(pg) = kneo_tests::postgres::PostgresServer::start() else { return };
                    let store = kneo_server::PostgresStore::connect(&pg.url())
                        .await
                        .expect("postgres is up")
                        .timeout(std::time::Duration::from_secs(2));
                    store.migrate().await.expect("the migration runs");
                    super::$name(store).await
                }
            )*
        }
    };
}

suite!(
    lost_response_is_replayed_not_rerun,
    concurrent_requests_with_one_key_run_once,
    in_flight_key_is_409_in_use,
    same_key_other_request_is_a_mismatch,
    lease_expiry_and_fencing,
    a_503_or_429_releases_the_claim,
    a_500_is_stored_and_replayed,
    a_dropped_request_runs_to_completion,
    a_panicking_handler_keeps_its_key,
    a_failing_service_keeps_its_key,
    a_handler_slower_than_its_lease_keeps_its_claim,
    callers_do_not_share_keys,
    other_methods_and_unkeyed_requests_pass_through,
    methods_are_configurable,
    key_syntax,
    required_key,
    body_over_max_body_is_413,
    a_response_too_big_to_store,
);

async fn redis_store(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("redis-server is up")
}

/// Behaviour 9 (memory): a store full of in-flight claims fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_full_of_claims_answers_503() {
    let server = TestServer::start(
        App::Axum,
        IdempotencyLayer::new(MemoryStore::new().max_entries(1)),
    )
    .await;
    let client = server.client("key-1", once());
    let blocked = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "holds-the-slot", "{}").await })
    };
    server.state.blocked.notified().await;
    let err = post(&client, "/pay", "no-room", "{}")
        .await
        .expect_err("full");
    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_problem(&err, 503, "idempotency_store_unavailable");
    assert_eq!(server.runs(), 1, "no handler ran without a claim");
    server.state.gate.notify_one();
    blocked.await.expect("task").expect("completes");
    // Completed records can be evicted: there is room again.
    post(&client, "/pay", "no-room", "{}").await.expect("room");
}

/// Redis: a first request costs 2 commands (SET NX, EVALSHA), a replay 1 (SET NX).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_per_first_request_and_replay() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server =
        TestServer::start(App::Axum, IdempotencyLayer::new(redis_store(&redis).await)).await;
    let client = server.client("key-1", once());

    redis.reset_stats();
    post(&client, "/pay", "count", "{}").await.expect("first");
    let first = redis.command_calls();
    redis.reset_stats();
    let replay = post(&client, "/pay", "count", "{}").await.expect("replay");
    assert!(replay.replayed());
    let replayed = redis.command_calls();

    // commandstats also counts the commands a script runs inside EVALSHA
    // (GET, SET): the client sent SET (claim) and EVALSHA (complete).
    let expected_first = [
        ("config|resetstat", 1),
        ("evalsha", 1),
        ("get", 1),
        ("set", 2),
    ];
    assert_eq!(
        first,
        expected_first
            .map(|(k, v)| (k.to_owned(), v))
            .into_iter()
            .collect(),
        "first request"
    );
    let expected_replay = [("config|resetstat", 1), ("set", 1)];
    assert_eq!(
        replayed,
        expected_replay
            .map(|(k, v)| (k.to_owned(), v))
            .into_iter()
            .collect(),
        "replay"
    );
}

/// Redis: two servers sharing one Redis, 200 concurrent same-key requests
/// split across both → exactly one handler run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_run_a_key_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let state = Arc::new(State::default());
    let one = TestServer::with_state(
        App::Axum,
        IdempotencyLayer::new(redis_store(&redis).await),
        state.clone(),
    )
    .await;
    let two = TestServer::with_state(
        App::Hyper,
        IdempotencyLayer::new(redis_store(&redis).await),
        state.clone(),
    )
    .await;
    // `409`s are retried after their `Retry-After: 1`: enough attempts that
    // a slow machine's first run cannot outlast them.
    let clients = [
        one.client("key-1", fast().max_attempts(10)),
        two.client("key-1", fast().max_attempts(10)),
    ];
    let replies = join_all(
        (0..200).map(|i| post(&clients[i % 2], "/pay?sleep_ms=300", "fleet", r#"{"a":1}"#)),
    )
    .await;
    assert_eq!(state.runs(), 1, "one handler run across the fleet");
    let first = replies[0].as_ref().expect("ok").body.clone();
    for reply in &replies {
        assert_eq!(reply.as_ref().expect("every request ends well").body, first);
    }
    assert!(state.count(409) >= 1);
}

/// Behaviour 9 (Redis): Redis stopped → 503 problems, no handler run without a
/// claim; Redis back → the service resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_then_recovers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server =
        TestServer::start(App::Axum, IdempotencyLayer::new(redis_store(&redis).await)).await;
    let client = server.client("key-1", fast());
    post(&client, "/pay", "before", "{}").await.expect("up");

    redis.stop();
    for i in 0..3 {
        let err = post(&client, "/pay", &format!("during-{i}"), "{}")
            .await
            .expect_err("store down");
        assert_eq!(err.kind(), ErrorKind::Server);
        assert_eq!(err.attempts(), 3, "a 503 is retried");
        assert_problem(&err, 503, "idempotency_store_unavailable");
    }
    assert_eq!(server.runs(), 1, "no handler ran without a claim");

    redis.restart();
    let once = server.client("key-1", once());
    let mut resumed = None;
    for _ in 0..100 {
        match post(&once, "/pay", "after", "{}").await {
            Ok(reply) => {
                resumed = Some(reply);
                break;
            }
            Err(err) => {
                assert_problem(&err, 503, "idempotency_store_unavailable");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let resumed = resumed.expect("the store reconnects");
    assert_eq!(resumed.json()["run"], 2);
    let replay = post(&once, "/pay", "after", "{}").await.expect("replay");
    assert!(replay.replayed(), "scripts reloaded after the restart");
}

/// Redis down when the handler finishes: its response cannot be stored. The
/// layer keeps trying while the lease lasts, so once Redis is back (durable:
/// it kept the claim) the retry is a replay, not a second run. (Before this
/// was fixed the claim sat until the lease ended, and the retry then ran the
/// handler again: a duplicate the fault workloads caught.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_stored_during_an_outage_lands_when_redis_is_back() {
    let Some(mut redis) = RedisServer::start_durable() else {
        return;
    };
    // The lease outlasts Redis' restart and the store's reconnection on a
    // loaded machine; the loop below waits past it.
    let lease = Duration::from_secs(15);
    let layer = IdempotencyLayer::new(redis_store(&redis).await).lease(lease);
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "stored-late", "{}").await })
    };
    server.state.blocked.notified().await;
    redis.stop();
    server.state.gate.notify_one();
    let first = first.await.expect("task").expect("the caller got its 201");
    assert_eq!(first.json()["run"], 1);
    redis.restart();

    let mut replay = None;
    let deadline = tokio::time::Instant::now() + lease * 2;
    while tokio::time::Instant::now() < deadline {
        match post(&client, "/block", "stored-late", "{}").await {
            Ok(reply) => {
                replay = Some(reply);
                break;
            }
            Err(err) => {
                // Until the record lands: the claim is still in flight, or
                // the store is still reconnecting.
                assert!(
                    err.status() == Some(StatusCode::CONFLICT)
                        || err.status() == Some(StatusCode::SERVICE_UNAVAILABLE),
                    "{err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let replay = replay.expect("answered within 30 s, past the 15 s lease");
    assert!(replay.replayed(), "the stored response, not a second run");
    assert_eq!(replay.json()["run"], 1);
    assert_eq!(server.runs(), 1, "the handler ran once");
}

/// `.fail_open()`: with Redis down the handler runs without a claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_runs_without_a_claim() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = TestServer::start(
        App::Axum,
        IdempotencyLayer::new(redis_store(&redis).await).fail_open(),
    )
    .await;
    let client = server.client("key-1", once());
    redis.stop();
    for _ in 0..2 {
        let reply = post(&client, "/pay", "open", "{}").await.expect("runs");
        assert!(!reply.replayed());
    }
    assert_eq!(
        server.runs(),
        2,
        "nothing is stored while the store is down"
    );
}
