//! kneo-server's `IdempotencyLayer` settings at their edges: durations
//! nothing can overflow, a lease that cannot be born expired, and
//! `fail_open` that opens only when the store cannot be reached.

mod server_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use kneo_server::store::Acquire;
use kneo_server::{IdempotencyLayer, MemoryStore, Store};
use kneo_tests::observed::{Observed, Step};
use server_support::*;

/// `.ttl(Duration::MAX)` and `.lease(Duration::MAX)` are bounded, not a
/// panic inside the store or a command Redis refuses.
async fn huge_durations_work<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store)
        .ttl(Duration::MAX)
        .lease(Duration::MAX)
        .max_hold(Duration::MAX);
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let first = post(&client, "/pay", "huge", "{}").await.expect("runs");
    assert_eq!(first.json()["run"], 1);
    let replay = post(&client, "/pay", "huge", "{}").await.expect("replayed");
    assert!(replay.replayed());
    assert_eq!(server.runs(), 1);
}

/// `.lease(Duration::ZERO)` used to make claims born expired, so concurrent
/// duplicates all ran; it is raised to the minimum lease.
async fn a_zero_lease_still_excludes_duplicates<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).lease(Duration::ZERO);
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "zero", "{}").await })
    };
    // The first holds its claim (renewed) until every duplicate is answered;
    // a duplicate that got through would run at once (only run 1 blocks).
    server.state.blocked.notified().await;
    let replies = join_all((0..9).map(|_| post(&client, "/block", "zero", "{}"))).await;
    for reply in &replies {
        let err = reply.as_ref().expect_err("told 409");
        assert_problem(err, 409, "idempotency_key_in_use");
    }
    assert_eq!(server.runs(), 1, "no duplicate ran");
    server.state.gate.notify_one();
    let first = first.await.expect("joined").expect("the first runs");
    assert_eq!(first.json()["run"], 1);
    assert_eq!(server.runs(), 1);
}

/// With `wait_for_first`, a duplicate that arrives while the first runs
/// waits and gets its response, not a `409`; without it, `409` at once.
async fn a_duplicate_can_wait_for_the_first_run<St: Store>(store: St) {
    // The claims answered "in flight" (a duplicate that waits for the first
    // run asks again and again).
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counted = in_flight.clone();
    let watched = Observed::new(store.clone(), move |_, step| {
        if let Step::Claimed(Ok(Acquire::InFlight(_))) = step {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let layer = IdempotencyLayer::new(watched).wait_for_first(Duration::from_secs(30));
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "waits", "{}").await })
    };
    server.state.blocked.notified().await;
    let second = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "waits", "{}").await })
    };
    // The second found the first's claim and is waiting: let the first end.
    eventually("the duplicate waits", || {
        in_flight.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(!second.is_finished(), "the duplicate was not answered yet");
    server.state.gate.notify_one();
    let first = first.await.expect("joined").expect("runs");
    let second = second
        .await
        .expect("joined")
        .expect("waited, then replayed");
    assert_eq!(first.json()["run"], 1);
    assert!(second.replayed());
    assert_eq!(second.json()["run"], 1);
    assert_eq!(server.runs(), 1);

    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store)).await;
    let client = server.client("key-1", once());
    let first = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "no-wait", "{}").await })
    };
    server.state.blocked.notified().await;
    let second = post(&client, "/block", "no-wait", "{}").await;
    assert_problem(&second.expect_err("409"), 409, "idempotency_key_in_use");
    server.state.gate.notify_one();
    first.await.expect("joined").expect("the first runs");
    assert_eq!(server.runs(), 1);
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
                    let store = kneo_server::RedisStore::builder(redis.url())
                        .timeout(std::time::Duration::from_secs(3))
                        .connect()
                        .await
                        .expect("redis-server is up");
                    super::$name(store).await
                }
            )*
        }
    };
}

suite!(
    huge_durations_work,
    a_zero_lease_still_excludes_duplicates,
    a_duplicate_can_wait_for_the_first_run,
);

/// `fail_open` opens on an unreachable store only: a store full of claims
/// is an answer (503), not an outage to run unprotected through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_does_not_open_on_a_full_store() {
    let layer = IdempotencyLayer::new(MemoryStore::new().max_entries(1)).fail_open();
    let server = TestServer::start(App::Axum, layer).await;
    let client = server.client("key-1", once());
    let blocked = {
        let client = client.clone();
        tokio::spawn(async move { post(&client, "/block", "holds-the-slot", "{}").await })
    };
    server.state.blocked.notified().await;
    let err = post(&client, "/pay", "no-room", "{}")
        .await
        .expect_err("refused");
    assert_problem(&err, 503, "idempotency_store_unavailable");
    assert_eq!(
        server.runs(),
        1,
        "the second request did not run unprotected"
    );
    server.state.gate.notify_one();
    blocked
        .await
        .expect("joined")
        .expect("the first one answers");
}

/// With `fail_open`, Redis down: the handler runs (unprotected, as asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_opens_when_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let store = kneo_server::RedisStore::builder(redis.url())
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("redis-server is up");
    redis.stop();
    let server = TestServer::start(App::Axum, IdempotencyLayer::new(store).fail_open()).await;
    let client = server.client("key-1", once());
    let reply = post(&client, "/pay", "down", "{}").await.expect("runs");
    assert_eq!(reply.json()["run"], 1);
}
