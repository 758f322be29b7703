//! A caller that gives up must not make its request run twice: callers hang
//! up on keyed POSTs (before the body is sent, while the handler runs, while
//! the response streams) and retry with the same key, against an axum
//! handler behind kneo-server's `IdempotencyLayer`, on `MemoryStore` and on
//! `RedisStore`. Every request takes effect exactly once, and every caller's
//! final answer is that one run's body, first answer or byte-identical
//! replay. (Through `kneo proxy`: `crates/kneo-cli/tests/hangup.rs`.)
//!
//! The seed is printed; set `HANGUP_SEED` to replay a run. The soak version
//! is `cargo run -p kneo-tests --bin faults -- --hangup`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore};
use kneo_tests::faults::caller::{attempt, Abandon, Answer, Attempt, Point};
use kneo_tests::faults::{
    run_hangup, Charge, Effects, HangupOptions, HangupReport, SlowServer, Target,
};
use kneo_tests::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const REQUESTS: u64 = 400;

/// A guard against a hang, never a claim about speed.
const GUARD: Duration = Duration::from_secs(20);

fn seed() -> u64 {
    std::env::var("HANGUP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

async fn check(target: Target) -> Option<HangupReport> {
    // 12 attempts: a request needs its 2 hang-ups at most and a 409 or two.
    let report = run_hangup(
        target,
        &HangupOptions::new(REQUESTS, seed()).max_attempts(12),
    )
    .await?;
    println!("{report}");
    // The promise, strictly, for every store: no duplicate, no wrong body,
    // every caller answered (a hang-up during the Redis claim used to leave
    // its key held for the lease; see tests/FAULTS.md).
    let violations = report.violations();
    assert!(violations.is_empty(), "{violations:#?}\n{report}");
    // The hang-ups happened, at every point, and the retries met both a run
    // still going and its record: a run without them would prove nothing.
    for point in Point::ALL {
        assert!(report.abandoned_at(point) > 0, "{point:?}: {report}");
    }
    assert!(report.in_use > 0, "{report}");
    assert!(report.replays > 0, "{report}");
    assert!(report.first_answers > 0, "{report}");
    Some(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hanging_up_on_a_memory_store_never_run_a_request_twice() {
    check(Target::Memory).await.expect("runs everywhere");
}

/// Skipped when `redis-server` is not installed (a failure under `CI=true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hanging_up_on_a_redis_store_never_run_a_request_twice() {
    check(Target::Redis).await;
}

/// Polls `cond` every 10 ms until it holds (a panic after [`GUARD`]).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let waiting = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(GUARD, waiting)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {GUARD:?}"));
}

/// Sends `charge` with `key` until an answer other than `409
/// idempotency_key_in_use`, waiting each 409's `Retry-After` (which must be
/// there, and 1 s); returns it and the 409s met.
async fn retry_until_answered(server: &SlowServer, key: &str, charge: &Charge) -> (Answer, u32) {
    for in_use in 0..20 {
        let answer = match attempt(server.addr(), key, &charge.body(), None, GUARD).await {
            Attempt::Answer(answer) => answer,
            other => panic!("the retry got no answer: {other:?}"),
        };
        if answer.status != 409 {
            return (answer, in_use);
        }
        assert_eq!(
            answer.code().as_deref(),
            Some("idempotency_key_in_use"),
            "{answer:?}"
        );
        assert_eq!(
            answer.retry_after(),
            Some(Duration::from_secs(1)),
            "{answer:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("still 409 after 20 retries");
}

/// The defect as reported: a handler that records its effect and then sleeps
/// 2 s; the caller hangs up once the handler began (after 0.3 s, in the
/// report) and retries with the same key. hyper
/// drops the service future when the connection closes; the layer must not
/// take that as "nothing happened". The retry gets `409` while the run goes
/// on, then its replay; the effect happened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_mid_handler_and_retries_gets_the_replay_of_the_one_run() {
    let effects = Arc::new(Effects::default());
    let server =
        SlowServer::start(IdempotencyLayer::new(MemoryStore::new()), effects.clone()).await;
    let charge = Charge::new(1, 0, 2_000, 0);
    // The whole request sent, then no reading: the caller hangs up (the task
    // is dropped, and its connection) once the handler has begun.
    let hang_up = Abandon::InHandler { after: GUARD };
    let first = {
        let (addr, body) = (server.addr(), charge.body());
        tokio::spawn(async move { attempt(addr, "K", &body, Some(hang_up), GUARD).await })
    };
    wait_until("the handler began", || server.runs(1).started == 1).await;
    first.abort();
    let first = first.await;
    assert!(
        first.as_ref().is_err_and(|e| e.is_cancelled()),
        "hung up: {first:?}"
    );

    // The retry, at once: while the run is still in its wait, the key is held.
    let retry = match attempt(server.addr(), "K", &charge.body(), None, GUARD).await {
        Attempt::Answer(answer) => answer,
        other => panic!("the retry got no answer: {other:?}"),
    };
    if server.runs(1).answered == 0 {
        assert_eq!(retry.status, 409, "{retry:?}");
        assert_eq!(retry.code().as_deref(), Some("idempotency_key_in_use"));
        assert_eq!(retry.retry_after(), Some(Duration::from_secs(1)));
    }
    let answer = if retry.status == 409 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        retry_until_answered(&server, "K", &charge).await.0
    } else {
        retry
    };
    let runs = server.runs(1);
    assert_eq!(effects.of_request(1), 1, "{runs:?}: {answer:?}");
    assert_eq!(runs.started, 1, "{runs:?}");
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(answer.replayed(), "{answer:?}");
    assert_eq!(
        answer.body,
        charge.expected(),
        "the one run's body, byte for byte"
    );
}

/// A hang-up before the body was all sent: the handler cannot have begun, so
/// the key is free and the retry runs the request, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_before_its_body_is_sent_leaves_the_key_free() {
    let effects = Arc::new(Effects::default());
    let server =
        SlowServer::start(IdempotencyLayer::new(MemoryStore::new()), effects.clone()).await;
    let charge = Charge::new(2, 0, 0, 0);
    let hang_up = Abandon::BeforeBody {
        sent: 5,
        after: Duration::from_millis(50),
    };
    let first = attempt(server.addr(), "K2", &charge.body(), Some(hang_up), GUARD).await;
    assert!(
        matches!(first, Attempt::Abandoned(Point::BeforeBody)),
        "{first:?}"
    );

    let (answer, in_use) = retry_until_answered(&server, "K2", &charge).await;
    assert_eq!(in_use, 0, "nothing held the key");
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(!answer.replayed(), "the retry is the one run: {answer:?}");
    assert_eq!(answer.body, charge.expected());
    assert_eq!(effects.of_request(2), 1);
    assert_eq!(server.runs(2).started, 1);
}

/// A hang-up while the response streams (the head and one byte of the body
/// read, its chunks 300 ms apart): the run goes on to its last chunk and is
/// recorded whole, and the retry gets it back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_while_the_response_streams_gets_the_whole_replay() {
    let effects = Arc::new(Effects::default());
    let server =
        SlowServer::start(IdempotencyLayer::new(MemoryStore::new()), effects.clone()).await;
    let charge = Charge::new(3, 0, 0, 300);
    let hang_up = Abandon::WhileStreaming { read: 1 };
    let first = attempt(server.addr(), "K3", &charge.body(), Some(hang_up), GUARD).await;
    assert!(
        matches!(first, Attempt::Abandoned(Point::WhileStreaming)),
        "{first:?}"
    );

    let (answer, _) = retry_until_answered(&server, "K3", &charge).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(answer.replayed(), "{answer:?}");
    assert_eq!(
        answer.body,
        charge.expected(),
        "the whole body, byte for byte"
    );
    assert_eq!(effects.of_request(3), 1);
    assert_eq!(server.runs(3).started, 1);
}

/// A loopback relay to `redis-server` that, once armed, holds the next reply
/// for `delay` (a slow Redis) and says when the command it answers went by,
/// so a hang-up can land inside a claim's round trip.
#[derive(Clone)]
struct SlowRedis {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    sent: Arc<Notify>,
}

impl SlowRedis {
    async fn start(port: u16, delay: Duration) -> SlowRedis {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let armed = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Notify::new());
        let relay = SlowRedis { addr, armed, sent };
        let this = relay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(redis) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_redis, mut to_redis) = redis.into_split();
                let up = this.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        // Before the write: once Redis has it, its reply may
                        // disarm the relay at any moment.
                        if up.armed.load(Ordering::SeqCst) {
                            up.sent.notify_one();
                        }
                        if to_redis.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let down = this.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = from_redis.read(&mut buf).await {
                        if down.armed.swap(false, Ordering::SeqCst) {
                            tokio::time::sleep(delay).await;
                        }
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        relay
    }
}

/// The hang-up workload's one finding on the first fix, as a test: a caller
/// hangs up while its claim's `SET NX` is on its way to Redis (its reply
/// takes 2 s; the hang-up comes once the command went to Redis). The handler
/// never began, so the key must be free again, and the retry run the
/// request. It used to be held: the `SET` landed after the request future
/// was dropped and nothing took it back, so the key answered `409` for the
/// whole lease (60 s) with nothing running under it. The claim now runs on
/// the request's own task, which releases it when the caller is gone before
/// the handler begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_during_the_redis_claim_leaves_the_key_free() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let slow = SlowRedis::start(redis.port(), Duration::from_secs(2)).await;
    // Longer than the held reply: the claim is answered, not timed out.
    let store = RedisStore::builder(format!("redis://{}/", slow.addr))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("redis store connects");
    let effects = Arc::new(Effects::default());
    let server = SlowServer::start(IdempotencyLayer::new(store), effects.clone()).await;
    let charge = Charge::new(4, 0, 0, 0);
    // The whole request sent, then no reading: the caller hangs up (the task
    // is dropped, and its connection) once the claim went to Redis.
    slow.armed.store(true, Ordering::SeqCst);
    let hang_up = Abandon::InHandler { after: GUARD };
    let first = {
        let (addr, body) = (server.addr(), charge.body());
        tokio::spawn(async move { attempt(addr, "K4", &body, Some(hang_up), GUARD).await })
    };
    tokio::time::timeout(GUARD, slow.sent.notified())
        .await
        .expect("the claim went to Redis");
    first.abort();
    let first = first.await;
    assert!(
        first.as_ref().is_err_and(|e| e.is_cancelled()),
        "hung up: {first:?}"
    );
    assert_eq!(
        server.runs(4).started,
        0,
        "hung up before the handler began"
    );

    let (answer, in_use) = retry_until_answered(&server, "K4", &charge).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert!(!answer.replayed(), "the retry is the one run: {answer:?}");
    assert_eq!(effects.of_request(4), 1, "after {in_use} 409s");
}
