//! Workload 5: exactly-once when the server process is `SIGKILL`ed, with
//! the idempotency record in the handler's own Postgres transaction; and the
//! same kills against the design it replaces, for comparison.
//!
//! ```no_run
//! use kneo_tests::faults::pg_kills::{run_kills, Design, KillOptions};
//!
//! # async fn demo() {
//! // The `pg_server` binary of this package (`cargo build -p kneo-tests --bins`).
//! let options = KillOptions::new("target/debug/pg_server", 300, 5);
//! let report = run_kills(Design::Transactional, &options).await.expect("postgres here");
//! println!("{report}");
//! assert!(report.violations().is_empty(), "{:?}", report.violations());
//! # }
//! ```
//!
//! # The set-up
//!
//! Two ledger server processes (`pg_server`, [`crate::ledger`]) behind the
//! [`FaultRelay`] (taken in turn; a dead one is skipped), on one Postgres.
//! Each logical request is one keyed `POST /pay` (its own key) through
//! kneo's [`Client`](kneo::Client) with retries; its handler inserts one
//! `ledger` row. The processes are `SIGKILL`ed and restarted on their port:
//!
//! - **at planned points**: a seeded share of the requests carries
//!   `x-kill-at: POINT`, and the first instance to get the request to that
//!   point stalls there and is killed ([`KillPoint`]: in the handler before
//!   the insert; after the insert, before the commit or the record; after
//!   the layer answered, before the response is written);
//! - **at random times** (seeded intervals): whatever the killed instance
//!   had in flight dies wherever it was.
//!
//! Every request in flight on a killed instance dies with it, so a planned
//! kill is also a kill at a random point for the others.
//!
//! [`Design::Transactional`]: `IdempotencyLayer::new(Transactional::new(pool))`,
//! the row and the record committed together. [`Design::Redis`]: kneo-server's
//! `IdempotencyLayer::new(RedisStore)` (1 s lease) and a handler that inserts
//! with autocommit.
//!
//! At the end, the ledger's rows are counted per key: a key with two rows is
//! a request applied twice, a key with none a lost request.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::Request;
use http_body_util::Full;
use kneo::retry::{Backoff, RetryLayer};
use kneo::{Attempts, ClientLayer};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::relay::{Fault, FaultConfig, FaultRelay};
use crate::ledger::{self, KillPoint};
use crate::postgres::PostgresServer;
use crate::redis::RedisServer;

/// How long a `pg_server` has to print its address.
const STARTUP: Duration = Duration::from_secs(20);

/// Which design the ledger server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Design {
    /// The record in the handler's transaction (kneo-server's `Transactional`).
    Transactional,
    /// The record in a `RedisStore`, the row inserted with autocommit.
    Redis,
}

impl Design {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Design::Transactional => "5 transactional (row and record in one Postgres transaction)",
            Design::Redis => "5 autocommit row + RedisStore record",
        }
    }
}

/// How workload 5 runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KillOptions {
    /// The `pg_server` binary.
    pub pg_server: PathBuf,
    /// Logical requests (each its own key).
    pub requests: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The seed of the planned kill points and of the random kills' times.
    pub seed: u64,
    /// The share of requests with a planned kill point.
    pub kill_rate: f64,
    /// Relative weights of the planned points: in the handler, after the
    /// insert, after the layer answered.
    pub kill_mix: [u32; 3],
    /// The mean time between kills at random times (none: only planned).
    pub random_kills: Option<Duration>,
    /// The relay's own faults (default: none).
    pub faults: FaultConfig,
    /// kneo's `max_attempts`.
    pub max_attempts: u32,
    /// kneo's per-attempt timeout.
    pub attempt_timeout: Duration,
    /// kneo's deadline over all attempts.
    pub deadline: Duration,
    /// The bound on one logical request; past it, it counts as hung.
    pub hang_after: Duration,
    /// How many times a failure that is replay-safe is sent again with its
    /// key, as a caller would.
    pub caller_retries: u32,
    /// [`Design::Redis`]: the lease of an in-flight claim.
    pub lease: Duration,
}

impl KillOptions {
    /// `requests` against `pg_server`, seeded with `seed`: concurrency 16, 2%
    /// of the requests with a planned kill (in the handler, after the insert,
    /// after the answer, weighted 1:2:1), a random kill every 1 s on average,
    /// no relay faults, 10 attempts (backoff base 20 ms, cap 1 s), 2 s per
    /// attempt, 10 s deadline, 3 caller resends, a 1 s lease.
    pub fn new(pg_server: impl Into<PathBuf>, requests: u64, seed: u64) -> Self {
        KillOptions {
            pg_server: pg_server.into(),
            requests,
            concurrency: 16,
            seed,
            kill_rate: 0.02,
            kill_mix: [1, 2, 1],
            random_kills: Some(Duration::from_secs(1)),
            faults: FaultConfig::new(0.0, seed),
            max_attempts: 10,
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            hang_after: Duration::from_secs(60),
            caller_retries: 3,
            lease: Duration::from_secs(1),
        }
    }

    /// Sets the share of requests with a planned kill point.
    pub fn kill_rate(mut self, rate: f64) -> Self {
        self.kill_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Sets the mean time between random kills (none: only planned ones).
    pub fn random_kills(mut self, every: Option<Duration>) -> Self {
        self.random_kills = every;
        self
    }

    /// Sets the relay's fault rate (seeded with the same seed).
    pub fn fault_rate(mut self, rate: f64) -> Self {
        self.faults = FaultConfig::new(rate, self.seed);
        self
    }

    /// Sets the concurrency.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The planned kill point of each request, from the seed.
    fn plan(&self) -> Vec<Option<KillPoint>> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let total: u32 = self.kill_mix.iter().sum();
        (0..self.requests)
            .map(|_| {
                if total == 0 || rng.f64() >= self.kill_rate {
                    return None;
                }
                let mut n = rng.u32(0..total);
                for (weight, point) in self.kill_mix.iter().zip(KillPoint::ALL) {
                    if n < *weight {
                        return Some(point);
                    }
                    n -= weight;
                }
                unreachable!("invariant: n < total")
            })
            .collect()
    }
}

/// What workload 5 did, and what it shows.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KillReport {
    /// The design's name.
    pub design: &'static str,
    /// Whether the design promises exactly-once under kills (the
    /// transactional one); the other's duplicates are a figure, not a
    /// violation.
    pub promises_exactly_once: bool,
    /// The seed.
    pub seed: u64,
    /// Logical requests sent.
    pub requests: u64,
    /// Requests the client reported as succeeded.
    pub succeeded: u64,
    /// Of those, answered by a replay of the recorded response.
    pub replayed: u64,
    /// Attempts kneo made over all requests, the caller's resends included.
    pub attempts: u64,
    /// Logical requests the caller sent again with the key.
    pub caller_retries: u64,
    /// Requests with a planned kill point, by point.
    pub planned: BTreeMap<&'static str, u64>,
    /// Kills, by cause: a planned point reached (`handler`, `inserted`,
    /// `answered`), `random`, or `exited` (the process died by itself).
    pub kills: BTreeMap<&'static str, u64>,
    /// Connections the relay accepted, by the fault they got.
    pub faults: BTreeMap<&'static str, u64>,
    /// Rows in the ledger.
    pub rows: u64,
    /// Rows ever inserted, committed or not (the values drawn from the
    /// ledger's id sequence, which a rollback does not give back): `inserts
    /// - rows` inserts were rolled back, by a kill before their commit.
    pub inserts: u64,
    /// Keys with more than one row: requests applied more than once.
    pub duplicate_keys: u64,
    /// Rows beyond the first of their key.
    pub extra_rows: u64,
    /// Duplicated keys by the request's planned kill point (`none`: only
    /// random kills, or kills of another request, hit it).
    pub duplicates_by_point: BTreeMap<&'static str, u64>,
    /// Requests with no row.
    pub lost: u64,
    /// Succeeded requests whose response names a row of another key.
    pub wrong_response: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Requests still pending after [`KillOptions::hang_after`].
    pub hung: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl KillReport {
    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Kills of every cause.
    pub fn total_kills(&self) -> u64 {
        self.kills.values().sum()
    }

    /// Everything that breaks the promise; empty when the run proves it. For
    /// a design that does not promise exactly-once under kills
    /// ([`Design::Redis`]), duplicates are left out: they are what the run
    /// measures.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("{}: {n} {what}", self.design));
            }
        };
        if self.promises_exactly_once {
            check(self.duplicate_keys, "requests applied more than once");
        }
        check(self.lost, "requests with no ledger row");
        check(self.failed(), "requests that failed");
        check(self.hung, "requests hung past their bound");
        check(self.wrong_response, "responses naming another key's row");
        check(
            self.kills.get("exited").copied().unwrap_or(0),
            "server processes that died unkilled",
        );
        let accounted = self.succeeded + self.failed() + self.hung;
        if accounted != self.requests {
            v.push(format!(
                "{}: {} requests sent, {accounted} accounted for",
                self.design, self.requests
            ));
        }
        v
    }
}

fn join(map: &BTreeMap<impl fmt::Display, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for KillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload {}: seed {}, {:.1} s",
            self.design,
            self.seed,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  logical requests {}, succeeded {} ({} replayed), failed {}, hung {}",
            self.requests,
            self.succeeded,
            self.replayed,
            self.failed(),
            self.hung
        )?;
        writeln!(
            f,
            "  attempts {} (caller resends with the key {})",
            self.attempts, self.caller_retries
        )?;
        writeln!(f, "  planned kill points: {}", join(&self.planned))?;
        writeln!(
            f,
            "  SIGKILLs {}: {}",
            self.total_kills(),
            join(&self.kills)
        )?;
        writeln!(f, "  connections by fault: {}", join(&self.faults))?;
        writeln!(
            f,
            "  ledger rows {} (inserts {}, rolled back {}), duplicated keys {} ({} extra rows; by planned point: {}), lost {}",
            self.rows,
            self.inserts,
            self.inserts.saturating_sub(self.rows),
            self.duplicate_keys,
            self.extra_rows,
            join(&self.duplicates_by_point),
            self.lost
        )?;
        write!(
            f,
            "  failures by kind: {}; wrong responses {}",
            join(&self.failures),
            self.wrong_response
        )
    }
}

/// How to start one `pg_server`.
#[derive(Debug, Clone)]
struct Spec {
    bin: PathBuf,
    postgres: String,
    redis: Option<String>,
    lease: Duration,
    stall_dir: PathBuf,
    max_connections: u32,
}

/// Kills by cause, across the fleet.
type KillCounts = Arc<Mutex<BTreeMap<&'static str, u64>>>;

/// Starts `pg_server` on `port` (0: any); its child, stdout lines and port.
async fn start(
    spec: &Spec,
    port: u16,
) -> Result<(Child, Lines<BufReader<ChildStdout>>, u16), String> {
    let mut command = Command::new(&spec.bin);
    command
        .args(["--postgres", &spec.postgres])
        .args(["--port", &port.to_string()])
        .args(["--max-connections", &spec.max_connections.to_string()])
        .arg("--stall-dir")
        .arg(&spec.stall_dir);
    if let Some(redis) = &spec.redis {
        command
            .args(["--redis", redis])
            .args(["--lease-ms", &spec.lease.as_millis().to_string()]);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", spec.bin.display()))?;
    let stdout = child.stdout.take().expect("invariant: stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = match tokio::time::timeout(STARTUP, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(_) => return Err("pg_server exited before listening".to_owned()),
        Err(_) => return Err(format!("pg_server printed nothing in {STARTUP:?}")),
    };
    let port = first
        .strip_prefix("listening ")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .ok_or_else(|| format!("pg_server: unexpected first line {first:?}"))?;
    Ok((child, lines, port))
}

/// One instance slot: a `pg_server` on a fixed port, killed when it stalls
/// or is told to, and started again on the same port.
struct Slot {
    port: u16,
    kill: Killer,
    task: JoinHandle<()>,
}

/// Where random kills are sent to one slot.
#[derive(Clone)]
struct Killer {
    /// At most one kill waits; see [`kill_randomly`].
    send: mpsc::Sender<()>,
    /// `false` from a kill until its restart is done.
    up: Arc<AtomicBool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The task owns the child (killed on drop).
        self.task.abort();
    }
}

impl Slot {
    async fn start(spec: Spec, kills: KillCounts) -> Slot {
        let (child, lines, port) = start(&spec, 0).await.unwrap_or_else(|e| panic!("{e}"));
        let (send, rx) = mpsc::channel(1);
        let up = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(supervise(spec, child, lines, port, rx, up.clone(), kills));
        Slot {
            port,
            kill: Killer { send, up },
            task,
        }
    }
}

/// Kills the instance when it says it stalled, or on a message, and starts
/// another on its port; forever (until aborted). `up` is `false` from a kill
/// until the restart is done; a random kill that arrived meanwhile is
/// dropped (it would kill the fresh instance at once).
async fn supervise(
    spec: Spec,
    mut child: Child,
    mut lines: Lines<BufReader<ChildStdout>>,
    port: u16,
    mut kill: mpsc::Receiver<()>,
    up: Arc<AtomicBool>,
    kills: KillCounts,
) {
    loop {
        let cause = tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let point = line
                        .strip_prefix("stalled ")
                        .and_then(|rest| rest.split(' ').next())
                        .and_then(KillPoint::parse);
                    match point {
                        Some(point) => point.as_str(),
                        None => {
                            eprintln!("pg_server :{port}: {line}");
                            continue;
                        }
                    }
                }
                _ => "exited",
            },
            Some(()) = kill.recv() => "random",
        };
        up.store(false, Ordering::SeqCst);
        let _ = child.start_kill();
        let _ = child.wait().await;
        *kills
            .lock()
            .expect("not poisoned")
            .entry(cause)
            .or_default() += 1;
        // The port can be briefly unavailable; a few tries.
        let mut tries = 0;
        (child, lines) = loop {
            match start(&spec, port).await {
                Ok((child, lines, _)) => break (child, lines),
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("pg_server :{port} restart: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("pg_server :{port} does not restart: {e}"),
            }
        };
        while kill.try_recv().is_ok() {}
        up.store(true, Ordering::SeqCst);
    }
}

/// Sends a kill to a seeded-random slot at seeded-random intervals (uniform
/// in half to one and a half times `mean`). A kill that comes while any slot
/// is down (killed, not yet restarted), or while one waits to be carried
/// out, is dropped: random kills never take every instance down at once
/// however slow the restarts of a loaded machine, and never queue up to
/// strike a slot again the moment it is back.
async fn kill_randomly(slots: Vec<Killer>, mean: Duration, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6b69_6c6c);
    loop {
        tokio::time::sleep(mean.mul_f64(0.5 + rng.f64())).await;
        let target = &slots[rng.usize(..slots.len())];
        if slots.iter().all(|s| s.up.load(Ordering::SeqCst)) {
            let _ = target.send.try_send(());
        }
    }
}

/// The attempts of one logical request.
#[derive(Debug, Default, Clone, Copy)]
struct Tries {
    attempts: u64,
    caller_retries: u64,
}

/// How one logical request ended.
enum Outcome {
    Succeeded {
        replayed: bool,
        ledger_id: Option<i64>,
    },
    Failed(kneo::Error),
    Hung,
}

/// The key of logical request `id`.
fn key_of(id: u64) -> String {
    format!("w5-{id}")
}

/// One `POST /pay` through kneo's client and the body read; the attempts.
async fn send(client: &kneo::Client, id: u64, point: Option<KillPoint>) -> (Outcome, u64) {
    let mut req = Request::post("/pay")
        // One request per connection: the relay reads a response to end of stream.
        .header("connection", "close")
        .header("authorization", "Bearer faults")
        .header("content-type", "application/json")
        .header("idempotency-key", key_of(id));
    if let Some(point) = point {
        req = req.header("x-kill-at", point.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(format!(r#"{{"id":{id}}}"#))))
        .expect("valid request");
    let res = match client.request(req).await {
        Ok(res) => res,
        Err(e) => {
            let attempts = u64::from(e.attempts().max(1));
            return (Outcome::Failed(e), attempts);
        }
    };
    let attempts = res
        .extensions()
        .get::<Attempts>()
        .map_or(1, |a| u64::from(a.count()));
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    match client.read_bytes(res).await {
        Ok(body) => {
            let ledger_id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["ledger_id"].as_i64());
            (
                Outcome::Succeeded {
                    replayed,
                    ledger_id,
                },
                attempts,
            )
        }
        Err(e) => (Outcome::Failed(e), attempts),
    }
}

/// One logical request, sent again with its key (up to `caller_retries`
/// times) when it fails replay-safe.
async fn logical(
    client: &kneo::Client,
    id: u64,
    point: Option<KillPoint>,
    caller_retries: u32,
) -> (Outcome, Tries) {
    let mut tries = Tries::default();
    loop {
        let (outcome, attempts) = send(client, id, point).await;
        tries.attempts += attempts;
        if let Outcome::Failed(err) = &outcome {
            if err.is_replay_safe()
                && err.idempotency_key().is_some()
                && tries.caller_retries < u64::from(caller_retries)
            {
                tries.caller_retries += 1;
                continue;
            }
        }
        return (outcome, tries);
    }
}

/// kneo's client for the workload: retries with a 20 ms backoff base (1 s
/// cap), so a few hundred milliseconds with both instances down are ridden
/// out; no retry budget.
fn client(base: &str, options: &KillOptions) -> kneo::Client {
    let retry = RetryLayer::new().backoff(
        Backoff::new()
            .base(Duration::from_millis(20))
            .cap(Duration::from_secs(1)),
    );
    let layer = ClientLayer::new()
        .retry(retry)
        .max_attempts(options.max_attempts)
        .attempt_timeout(options.attempt_timeout)
        .deadline(options.deadline)
        .no_budget();
    kneo::Client::builder()
        .base_url(base)
        .layer(layer)
        .build()
        .expect("the client builds")
}

/// A directory for the kill-point markers, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "kneo-w5-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs workload 5 with `design`; `None` (with the reason printed) when
/// Postgres, or for [`Design::Redis`] `redis-server`, is not installed
/// (outside CI).
pub async fn run_kills(design: Design, options: &KillOptions) -> Option<KillReport> {
    let pg = PostgresServer::start()?;
    let redis = match design {
        Design::Transactional => None,
        Design::Redis => Some(RedisServer::start()?),
    };
    let pool = PgPool::connect(&pg.url()).await.expect("postgres is up");
    // Before the instances start, so that their migrations find the tables.
    ledger::migrate(&pool).await;
    let stall_dir = Scratch::new();
    let spec = Spec {
        bin: options.pg_server.clone(),
        postgres: pg.url(),
        redis: redis.as_ref().map(RedisServer::url),
        lease: options.lease,
        stall_dir: stall_dir.path().to_owned(),
        // Enough for every request in flight on one instance.
        max_connections: u32::try_from(options.concurrency).unwrap_or(u32::MAX) + 4,
    };
    let kills = KillCounts::default();
    let mut slots = Vec::new();
    for _ in 0..2 {
        slots.push(Slot::start(spec.clone(), kills.clone()).await);
    }
    let targets = slots
        .iter()
        .map(|s| std::net::SocketAddr::from(([127, 0, 0, 1], s.port)))
        .collect();
    let relay = FaultRelay::start(targets, options.faults.clone()).await;
    let killer = options.random_kills.map(|mean| {
        let senders = slots.iter().map(|s| s.kill.clone()).collect();
        tokio::spawn(kill_randomly(senders, mean, options.seed))
    });
    let client = client(&format!("http://{}", relay.addr()), options);
    let plan = options.plan();

    let began = Instant::now();
    let outcomes: Vec<(u64, Outcome, Tries)> = futures_util::stream::iter(0..options.requests)
        .map(|id| {
            let client = client.clone();
            let point = plan[usize::try_from(id).expect("fits")];
            async move {
                let logical = logical(&client, id, point, options.caller_retries);
                match tokio::time::timeout(options.hang_after, logical).await {
                    Ok((outcome, tries)) => (id, outcome, tries),
                    Err(_) => (id, Outcome::Hung, Tries::default()),
                }
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let elapsed = began.elapsed();
    if let Some(killer) = killer {
        killer.abort();
    }
    let kills = kills.lock().expect("not poisoned").clone();
    drop(slots);

    let mut rows_of: HashMap<String, Vec<i64>> = HashMap::new();
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, idem_key FROM ledger")
        .fetch_all(&pool)
        .await
        .expect("read the ledger");
    let (last, called): (i64, bool) =
        sqlx::query_as("SELECT last_value, is_called FROM ledger_id_seq")
            .fetch_one(&pool)
            .await
            .expect("read the ledger's sequence");
    for (id, key) in &rows {
        rows_of.entry(key.clone()).or_default().push(*id);
    }
    let mut report = KillReport {
        design: design.as_str(),
        promises_exactly_once: design == Design::Transactional,
        seed: options.seed,
        requests: options.requests,
        rows: rows.len() as u64,
        inserts: if called {
            u64::try_from(last).unwrap_or(0)
        } else {
            0
        },
        kills,
        elapsed,
        ..KillReport::default()
    };
    for point in plan.iter().flatten() {
        *report.planned.entry(point.as_str()).or_default() += 1;
    }
    for (id, outcome, tries) in outcomes {
        let key = key_of(id);
        let ids = rows_of.get(&key).map_or(&[][..], Vec::as_slice);
        report.attempts += tries.attempts;
        report.caller_retries += tries.caller_retries;
        match ids.len() {
            0 => report.lost += 1,
            1 => {}
            n => {
                report.duplicate_keys += 1;
                report.extra_rows += n as u64 - 1;
                let point =
                    plan[usize::try_from(id).expect("fits")].map_or("none", KillPoint::as_str);
                *report.duplicates_by_point.entry(point).or_default() += 1;
            }
        }
        match outcome {
            Outcome::Succeeded {
                replayed,
                ledger_id,
            } => {
                report.succeeded += 1;
                report.replayed += u64::from(replayed);
                if !ledger_id.is_some_and(|l| ids.contains(&l)) {
                    report.wrong_response += 1;
                }
            }
            Outcome::Failed(err) => {
                let said = if err.is_replay_safe() {
                    "replay_safe"
                } else {
                    "may_be_applied"
                };
                *report
                    .failures
                    .entry(format!("{}/{said}", err.kind().as_str()))
                    .or_default() += 1;
            }
            Outcome::Hung => report.hung += 1,
        }
    }
    for fault in Fault::ALL {
        report
            .faults
            .insert(fault.as_str(), relay.counts().get(fault));
    }
    drop(relay);
    drop(redis);
    Some(report)
}
