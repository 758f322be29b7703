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
//! Postgres: `initdb` and `postgres` from `PATH` or
//! `/usr/lib/postgresql/*/bin` (as the `postgres` user through `setpriv`
//! when run as root), `fsync=off`, `pg_stat_statements` preloaded. Without
//! Postgres the bench prints `skipped: …` and exits; without
//! `pg_stat_statements` it measures throughput and says the statement counts
//! were skipped.
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
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use common::payment;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kneo_server::transactional::{IdempotentTransaction, Transactional};
use kneo_server::{IdempotencyLayer, PostgresStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const CONCURRENCY: usize = 32;
const WARMUP: Duration = Duration::from_millis(200);
const MEASURE: Duration = Duration::from_millis(800);
const ROUNDS: usize = 6;

const LEDGER: &str = "\
CREATE TABLE IF NOT EXISTS ledger (
    id bigserial PRIMARY KEY,
    idem_key text NOT NULL,
    amount bigint NOT NULL
)";

const INSERT: &str = "INSERT INTO ledger (idem_key, amount) VALUES ($1, $2) RETURNING id";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A `postgres` child process and its directory, stopped and removed on drop.
struct Postgres {
    port: u16,
    dir: PathBuf,
    child: Child,
    /// `pg_stat_statements` is loaded.
    statements: bool,
}

fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, as the `postgres` user when we are root (the server refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// `initdb` and `postgres` on a free port, or why not.
    fn start() -> Result<Postgres, String> {
        let bin =
            bin_dir().ok_or("initdb/postgres not found on PATH or in /usr/lib/postgresql/*/bin")?;
        let dir = std::env::temp_dir().join(format!(
            "kneo-pg-bench-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(format!("chown {} to postgres", dir.display()));
            }
        }
        let data = dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // With pg_stat_statements first; without it if it is not installed.
        for statements in [true, false] {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("a free port: {e}"))?
                .port();
            let mut command = as_postgres(&bin.join("postgres"));
            command
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "max_connections=100"]);
            if statements {
                command.args(["-c", "shared_preload_libraries=pg_stat_statements"]);
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("postgres: {e}"))?;
            let mut server = Postgres {
                port,
                dir: dir.clone(),
                child,
                statements,
            };
            if server.wait_ready(&data) {
                return Ok(server);
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
            // Keep the directory for the next try.
            server.dir = PathBuf::new();
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err("postgres did not start".to_owned())
    }

    /// Whether `postmaster.pid` says "ready" before the server exits or 30 s pass.
    fn wait_ready(&mut self, data: &Path) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let status = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if status.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: Postgres' fast shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

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

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/pay")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// A new key per request: every request is a first request.
    Fresh,
    /// One key per worker: after the first, every request is a replay.
    Replay,
}

struct Run {
    /// Requests in the measured window.
    requests: u64,
    /// Every request sent, warm-up included.
    sent: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

async fn load(client: &HttpClient, url: &str, keys: Keys, label: &str) -> Run {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stop_warmup = Instant::now() + WARMUP;
    let stop = stop_warmup + MEASURE;
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|worker| {
            let client = client.clone();
            let url = url.to_owned();
            let label = label.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut sent = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= stop {
                        break;
                    }
                    let key = match keys {
                        Keys::Fresh => format!("{label}-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
                        Keys::Replay => format!("{label}-replay-{worker}"),
                    };
                    let res = client
                        .request(payment(&url, key))
                        .await
                        .expect("loopback server answers");
                    let status = res.status();
                    let body = res.into_body().collect().await.expect("body").to_bytes();
                    assert_eq!(status, StatusCode::CREATED, "{label}: {body:?}");
                    sent += 1;
                    if now >= stop_warmup {
                        latencies.push(now.elapsed());
                    }
                }
                (latencies, sent)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut sent = 0;
    for t in tasks {
        let (latencies, n) = t.await.expect("worker");
        all.extend(latencies);
        sent += n;
    }
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        requests: all.len() as u64,
        sent,
        elapsed: MEASURE,
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

/// One request per worker key, so that a replay run replays from its first request.
async fn load_once(client: &HttpClient, url: &str, label: &str) {
    for worker in 0..CONCURRENCY {
        let res = client
            .request(payment(url, format!("{label}-replay-{worker}")))
            .await
            .expect("answers");
        res.into_body().collect().await.expect("body");
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
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    if !pg.statements {
        println!("pg_stat_statements could not be loaded: statement counts skipped");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
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
        if pg.statements {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&admin)
                .await
                .expect("pg_stat_statements");
        }
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CONCURRENCY)
            .build_http();
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
                let counting = round == 0 && pg.statements;
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
        println!("| scenario | req/s | vs bare | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|");
        fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        }
        let bare_runs: Vec<f64> = results
            .get("1 bare: own transaction")
            .map(|runs| runs.iter().map(Run::rps).collect())
            .unwrap_or_default();
        for (label, runs) in &results {
            let ratios = runs
                .iter()
                .zip(&bare_runs)
                .map(|(r, bare)| r.rps() / bare)
                .collect();
            println!(
                "| {} | {:.0} | {:.2}x | {:.0} µs | {:.0} µs |",
                &label[2..],
                median(runs.iter().map(Run::rps).collect()),
                median(ratios),
                median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e6).collect()),
                median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e6).collect()),
            );
        }
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
