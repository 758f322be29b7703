//! kneo-server's transactional layer on a real Postgres: the record commits
//! in the handler's own transaction, so a request that did not commit left
//! nothing, and a retry runs it exactly once. The ledger app is
//! `kneo_tests::ledger`; the kill test runs it as a process (`pg_server`).

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use kneo::ClientLayer;
use kneo_server::transactional::Transactional;
use kneo_server::{IdempotencyLayer, MemoryStore, PostgresStore};
use kneo_tests::fast;
use kneo_tests::ledger::{self, Ledger};
use kneo_tests::postgres::PostgresServer;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A guard against a hang, not a claim about speed.
const GUARD: Duration = Duration::from_secs(30);

struct App {
    pool: PgPool,
    ledger: Ledger,
    client_base: String,
    task: tokio::task::JoinHandle<()>,
    _pg: PostgresServer,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    async fn start(
        configure: impl FnOnce(Transactional) -> Transactional,
        ledger: Ledger,
    ) -> Option<App> {
        let pg = PostgresServer::start()?;
        let pool = PgPool::connect(&pg.url()).await.expect("postgres is up");
        ledger::migrate(&pool).await;
        let router = ledger
            .clone()
            .router(configure(Transactional::new(pool.clone())));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Some(App {
            pool,
            ledger,
            client_base: format!("http://{addr}"),
            task,
            _pg: pg,
        })
    }

    fn client(&self, layer: ClientLayer) -> kneo::Client {
        kneo::Client::builder()
            .base_url(self.client_base.clone())
            .layer(layer)
            .build()
            .expect("client builds")
    }

    fn runs(&self) -> usize {
        self.ledger.runs.load(Ordering::SeqCst)
    }

    async fn rows(&self, key: &str) -> i64 {
        ledger::rows(&self.pool, key).await
    }
}

fn quiet() -> Ledger {
    Ledger::new(|_| {})
}

fn once() -> ClientLayer {
    fast().max_attempts(1)
}

async fn post(
    client: &kneo::Client,
    path: &str,
    key: &str,
) -> Result<(StatusCode, bool, serde_json::Value), kneo::Error> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"ten euros")))
        .expect("valid");
    let res = tokio::time::timeout(GUARD, client.request(req))
        .await
        .expect("no hang")?;
    let status = res.status();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body = client.read_bytes(res).await?;
    Ok((
        status,
        replayed,
        serde_json::from_slice(&body).unwrap_or_default(),
    ))
}

/// A keyed POST with `x-stall` (not part of the fingerprint): the handler
/// inserts its row, then never answers, so the transaction stays open until
/// the call is dropped (aborting the task hangs up) or the server dies.
fn stalled(
    client: kneo::Client,
    key: &'static str,
) -> tokio::task::JoinHandle<Result<StatusCode, kneo::Error>> {
    tokio::spawn(async move {
        let req = Request::post("/pay")
            .header("idempotency-key", key)
            .header("x-stall", "1")
            .body(Full::new(Bytes::from_static(b"ten euros")))
            .expect("valid");
        client.request(req).await.map(|res| res.status())
    })
}

/// The acceptance case: the server process is killed after the handler's
/// insert and before the commit. Nothing was applied; the retry (on a new
/// process) runs once, and the one after it is a replay: one ledger row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_between_insert_and_commit_applies_nothing() {
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let pool = PgPool::connect(&pg.url()).await.expect("postgres is up");
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pg_server"))
            .args(["--postgres", &pg.url()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("pg_server starts")
    };
    async fn listening(
        child: &mut tokio::process::Child,
    ) -> (
        String,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) {
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(GUARD, lines.next_line())
            .await
            .expect("starts")
            .expect("reads")
            .expect("a line");
        let addr = first
            .strip_prefix("listening ")
            .expect("listening ADDR")
            .to_owned();
        (format!("http://{addr}"), lines)
    }

    let mut doomed = spawn();
    let (url, mut lines) = listening(&mut doomed).await;
    let client = kneo::Client::builder()
        .base_url(url)
        .layer(once())
        .build()
        .expect("client");
    let stalled = stalled(client, "pay-killed");
    let inserted = tokio::time::timeout(GUARD, lines.next_line())
        .await
        .expect("the insert")
        .expect("reads");
    assert_eq!(inserted.as_deref(), Some("inserted pay-killed"));
    doomed.kill().await.expect("SIGKILL");
    let err = stalled
        .await
        .expect("joined")
        .expect_err("the caller got no answer");
    assert_eq!(err.kind(), kneo::ErrorKind::Network);

    let mut fresh = spawn();
    let (url, _lines) = listening(&mut fresh).await;
    let client = kneo::Client::builder()
        .base_url(url)
        .layer(fast())
        .build()
        .expect("client");
    let (status, replayed, _) = post(&client, "/pay", "pay-killed")
        .await
        .expect("the retry runs");
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    let (status, replayed, _) = post(&client, "/pay", "pay-killed").await.expect("replayed");
    assert_eq!((status, replayed), (StatusCode::CREATED, true));
    assert_eq!(
        ledger::rows(&pool, "pay-killed").await,
        1,
        "exactly one ledger row"
    );
}

/// A caller that hangs up before the commit rolls the request back: nothing
/// applied, and the retry runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_before_the_commit_leaves_nothing() {
    let inserted = Arc::new(Notify::new());
    let ledger = {
        let inserted = inserted.clone();
        Ledger::new(move |_| inserted.notify_one())
    };
    // The retry waits for the abandoned transaction's rollback, however long
    // the server takes to see the hang-up (had it committed instead, the
    // retry would be a replay of run 1).
    let Some(app) = App::start(|t| t.lock_wait(GUARD), ledger).await else {
        return;
    };
    // Only the hang-up ends it.
    let impatient = stalled(app.client(once()), "hang-up");
    tokio::time::timeout(GUARD, inserted.notified())
        .await
        .expect("the handler inserted its row");
    // Hang up: dropping the call closes its connection.
    impatient.abort();
    assert!(impatient.await.expect_err("aborted").is_cancelled());
    assert_eq!(app.rows("hang-up").await, 0, "uncommitted");
    let (status, replayed, body) = post(&app.client(once()), "/pay", "hang-up")
        .await
        .expect("runs");
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    assert_eq!(body["run"], 2);
    let (_, replayed, again) = post(&app.client(once()), "/pay", "hang-up")
        .await
        .expect("replayed");
    assert!(replayed);
    assert_eq!(again, body, "the same response");
    assert_eq!(app.rows("hang-up").await, 1);
}

/// Concurrent requests with one key: the others wait on the first's row
/// lock and get its response; one handler run, one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_wait_and_replay() {
    let Some(app) = App::start(|t| t.lock_wait(Duration::from_secs(10)), quiet()).await else {
        return;
    };
    let client = app.client(once());
    let replies = join_all((0..8).map(|_| post(&client, "/pay?sleep_ms=300", "together"))).await;
    let replies: Vec<_> = replies
        .into_iter()
        .map(|r| r.expect("every caller gets the response"))
        .collect();
    assert_eq!(
        replies.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    assert!(replies
        .iter()
        .all(|(status, _, body)| *status == StatusCode::CREATED && body["run"] == 1));
    assert_eq!(app.runs(), 1);
    assert_eq!(app.rows("together").await, 1);
}

/// Past `lock_wait`, a duplicate gets the usual `409` with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_past_the_lock_wait_is_409() {
    let inserted = Arc::new(Notify::new());
    let ledger = {
        let inserted = inserted.clone();
        Ledger::new(move |_| inserted.notify_one())
    };
    let Some(app) = App::start(|t| t.lock_wait(Duration::from_millis(100)), ledger).await else {
        return;
    };
    let client = app.client(once());
    // The first holds its key (its row inserted, its transaction open)
    // until it is dropped below.
    let first = stalled(client.clone(), "slow");
    tokio::time::timeout(GUARD, inserted.notified())
        .await
        .expect("the first inserted its row");
    let err = post(&client, "/pay", "slow").await.expect_err("409");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert_eq!(err.code(), "idempotency_key_in_use");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(app.runs(), 1, "the duplicate did not run");
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());
    assert_eq!(app.rows("slow").await, 0, "the first never committed");
}

/// A commit that fails (a deferred constraint) means nothing happened:
/// `503` "not processed", no row, no record; the retry runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_not_processed() {
    let Some(app) = App::start(|t| t, quiet()).await else {
        return;
    };
    for run in 1..=2 {
        let err = post(&app.client(once()), "/commit-fails", "doomed")
            .await
            .expect_err("503");
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
        assert_eq!(app.runs(), run, "not replayed: it ran again");
    }
    assert_eq!(app.rows("doomed").await, 0);
}

/// A `503` from the handler rolls its own write back and frees the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_the_handler_rolls_back() {
    let Some(app) = App::start(|t| t, quiet()).await else {
        return;
    };
    for run in 1..=2 {
        let err = post(&app.client(once()), "/busy", "busy")
            .await
            .expect_err("503");
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(app.runs(), run);
    }
    assert_eq!(app.rows("busy").await, 0);
}

/// The same key with another payload is a `422`; an expired record is
/// gone after `delete_expired`, and the key runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_expiry_and_cleanup() {
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let pool = PgPool::connect(&pg.url()).await.expect("postgres is up");
    ledger::migrate(&pool).await;
    // A handler of its own, with a short TTL.
    let app = axum::Router::new()
        .route(
            "/pay",
            axum::routing::post(|| async { (StatusCode::CREATED, "ok") }),
        )
        .layer(
            // Long enough for the replay and the mismatch on a loaded machine.
            IdempotencyLayer::new(Transactional::new(pool.clone())).ttl(Duration::from_secs(3)),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = kneo::Client::builder()
        .base_url(format!("http://{addr}"))
        .layer(once())
        .build()
        .expect("client");
    let send = |body: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::post("/pay")
                .header("idempotency-key", "ttl-1")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .expect("valid");
            client.request(req).await.map(|res| {
                (
                    res.status(),
                    res.headers().contains_key("idempotent-replayed"),
                )
            })
        }
    };
    assert_eq!(send("a").await.expect("runs"), (StatusCode::CREATED, false));
    assert_eq!(
        send("a").await.expect("replay"),
        (StatusCode::CREATED, true)
    );
    let err = send("b").await.expect_err("another payload");
    assert_eq!(err.kind(), kneo::ErrorKind::IdempotencyMismatch);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let store = PostgresStore::new(pool.clone());
    assert_eq!(store.delete_expired(100).await.expect("cleanup"), 1);
    assert_eq!(
        send("b").await.expect("runs again"),
        (StatusCode::CREATED, false)
    );
    task.abort();
}

/// A handler whose effect is a call to another API gives that call the
/// request's child key: its first run dies after the call (rolled back),
/// the rerun sends the same key, and the other API replays it. The card is
/// charged once; the ledger has one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_replays_the_upstream_call_by_its_child_key() {
    // The card API: honours keys, counts charges.
    let charges = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let card_api = {
        let charges = charges.clone();
        axum::Router::new()
            .route(
                "/charges",
                axum::routing::post(move || {
                    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
                    async move { (StatusCode::CREATED, format!("charge {n}")) }
                }),
            )
            .layer(IdempotencyLayer::new(MemoryStore::new()))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let card_addr = listener.local_addr().expect("addr");
    let card_task = tokio::spawn(async move {
        let _ = axum::serve(listener, card_api).await;
    });
    let mut ledger = quiet();
    ledger.upstream = Some(
        kneo::Client::builder()
            .base_url(format!("http://{card_addr}"))
            .layer(once())
            .build()
            .expect("client"),
    );
    let Some(app) = App::start(|t| t, ledger).await else {
        card_task.abort();
        return;
    };
    let err = post(&app.client(once()), "/charge", "order-1")
        .await
        .expect_err("the first run died");
    assert_eq!(err.kind(), kneo::ErrorKind::Network);
    assert_eq!(app.rows("order-1").await, 0, "rolled back");
    let (status, replayed, _) = post(&app.client(once()), "/charge", "order-1")
        .await
        .expect("the rerun");
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    assert_eq!(app.runs(), 2, "the handler ran twice");
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "the card was charged once"
    );
    assert_eq!(app.rows("order-1").await, 1);
    card_task.abort();
}
