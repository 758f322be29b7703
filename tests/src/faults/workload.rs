//! The workloads: logical requests through kneo's `ClientLayer`, over the
//! [`FaultRelay`], to [`FaultServer`]s; and the [`Report`] of what happened.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::idempotency::IdempotencyKeyLayer;
use kneo::retry::ReplayBody;
use kneo::{Attempts, ClientLayer, Sent};
use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore};
use tower::{Layer, Service, ServiceExt};

use super::process::ServerProcess;
use super::relay::{Fault, FaultConfig, FaultRelay};
use super::server::{Effects, FaultServer, Stall};
use crate::redis::RedisServer;
use crate::sidecar::Sidecar;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Workload {
    /// 1: keyed POSTs (kneo stamps the keys), one server, `MemoryStore`.
    Keyed,
    /// 2: keyed POSTs, two servers (the relay alternates) sharing a
    /// `RedisStore` on a real `redis-server`.
    KeyedRedis,
    /// 3: POSTs without a key (kneo's idempotency-key layer off).
    Unkeyed,
    /// 4: as 1, through the real `kneo proxy` (client → relay → proxy →
    /// server); needs [`Options::kneo`].
    Proxied,
}

impl Workload {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Keyed => "1 keyed/memory",
            Workload::KeyedRedis => "2 keyed/redis x2",
            Workload::Unkeyed => "3 unkeyed",
            Workload::Proxied => "4 keyed/memory via kneo proxy",
        }
    }

    fn keyed(self) -> bool {
        self != Workload::Unkeyed
    }
}

/// How a workload runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Logical requests.
    pub requests: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The relay's faults (rate, mix, seed).
    pub faults: FaultConfig,
    /// kneo's `max_attempts`.
    pub max_attempts: u32,
    /// kneo's per-attempt timeout.
    pub attempt_timeout: Duration,
    /// kneo's deadline over all attempts.
    pub deadline: Duration,
    /// The test's own bound on one logical request (deadline plus reading
    /// the body, and the caller's resends, with slack); past it the request
    /// counts as hung.
    pub hang_after: Duration,
    /// Keyed workloads: how many times a failure that is replay-safe and
    /// names its key (a body broken off after a 201) is sent again with that
    /// key, as a caller would. The resend must be answered from the record.
    pub caller_retries: u32,
    /// The servers' lease of an in-flight claim.
    pub lease: Duration,
    /// Workload 4: the `kneo` binary to run as the proxy.
    pub kneo: Option<PathBuf>,
    /// Workload 2: run the two servers as processes of this binary (the
    /// `fault_server` bin of this package) instead of in this process.
    pub server_processes: Option<PathBuf>,
    /// Workload 2 with server processes: the logical request whose handler
    /// stalls, on whichever instance gets it first, which is then killed
    /// (`SIGKILL`) mid-handler.
    pub crash: Option<u64>,
    /// Workload 2: kill `redis-server` and restart it mid-run.
    pub outage: Option<Outage>,
}

/// A Redis outage in workload 2: once `after` logical requests have
/// started, `redis-server` is killed, stays down for `down`, and is started
/// again on the same port, durable (it comes back with every acknowledged
/// write).
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// Logical requests started before the kill.
    pub after: u64,
    /// How long Redis stays down.
    pub down: Duration,
}

impl Options {
    /// `requests` at `fault_rate`, seeded with `seed`: concurrency 16, 10
    /// attempts, 2 s per attempt, 10 s deadline, hung after 30 s.
    pub fn new(requests: u64, fault_rate: f64, seed: u64) -> Self {
        Options {
            requests,
            concurrency: 16,
            faults: FaultConfig::new(fault_rate, seed),
            max_attempts: 10,
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            hang_after: Duration::from_secs(60),
            caller_retries: 3,
            lease: Duration::from_secs(5),
            kneo: None,
            server_processes: None,
            crash: None,
            outage: None,
        }
    }

    /// Workload 4: runs `kneo` as the proxy.
    pub fn kneo(mut self, kneo: impl Into<PathBuf>) -> Self {
        self.kneo = Some(kneo.into());
        self
    }

    /// Workload 2: runs the servers as processes of `fault_server` and
    /// kills the one that first gets logical request `id` mid-handler. The
    /// lease stays 5 s: a lease must outlast the longest pause a holder can
    /// suffer (see kneo-server's README), and at 2 s a loaded 2-core CI
    /// machine held the processes' renewals back long enough for leases to
    /// end under live work (2 requests ran twice, once in CI). The stalled
    /// request's retries wait out the dead holder's lease, so its caller
    /// gets 40 attempts and 30 s (attempts to the dead instance fail at once).
    pub fn crash(mut self, fault_server: impl Into<PathBuf>, id: u64) -> Self {
        self.server_processes = Some(fault_server.into());
        self.crash = Some(id);
        self.max_attempts = 40;
        self.deadline = Duration::from_secs(30);
        self.hang_after = Duration::from_secs(90);
        self
    }

    /// Workload 2: kills Redis after `after` requests started, for `down`.
    pub fn outage(mut self, after: u64, down: Duration) -> Self {
        self.outage = Some(Outage { after, down });
        self
    }

    /// Sets the concurrency.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
}

/// What a workload did, and what it proves.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Report {
    /// The workload's name.
    pub workload: &'static str,
    /// The relay's seed.
    pub seed: u64,
    /// The relay's fault rate.
    pub fault_rate: f64,
    /// Logical requests sent.
    pub requests: u64,
    /// Requests the client reported as succeeded.
    pub succeeded: u64,
    /// Of those, answered by the server's replay of a stored response.
    pub replayed: u64,
    /// Attempts kneo made over all requests (from `Attempts` and
    /// `Error::attempts`), the caller's resends included.
    pub attempts: u64,
    /// Keyed workloads: logical requests the caller sent again with the
    /// failure's key (see [`Options::caller_retries`]).
    pub caller_retries: u64,
    /// Connections the relay accepted, by the fault they got.
    pub faults: BTreeMap<&'static str, u64>,
    /// Effects the handler applied.
    pub effects: u64,
    /// Logical requests applied more than once (must be 0).
    pub duplicate_requests: u64,
    /// Idempotency keys applied more than once (must be 0).
    pub duplicate_keys: u64,
    /// Failures by kind and by what the error says: `may_be_applied` (the
    /// request may have reached the server and was not replay-safe to
    /// resend), `replay_safe` (keyed: a retry with the key is safe),
    /// `not_sent` (a connect error).
    pub failures: BTreeMap<String, u64>,
    /// Failed requests the server had in fact applied.
    pub failed_but_applied: u64,
    /// Succeeded requests without exactly one effect (must be 0).
    pub succeeded_without_one_effect: u64,
    /// Succeeded requests whose response named another request (must be 0).
    pub wrong_response: u64,
    /// Failures whose error misreports what was sent (must be 0): replay-safe
    /// without a key in workload 3, no key in 1 and 2, or "never sent" for a
    /// request that was applied.
    pub misreported_failures: u64,
    /// Requests still pending after [`Options::hang_after`] (must be 0).
    pub hung: u64,
    /// `503` answers the servers sent because their store was unavailable
    /// (refused, not run).
    pub store_unavailable: u64,
    /// With [`Options::outage`]: what happened around it.
    pub outage: Option<OutageReport>,
    /// With [`Options::crash`]: what happened to the stalled request.
    pub crash: Option<CrashReport>,
    /// Wall time.
    pub elapsed: Duration,
}

/// What happened around a Redis outage.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OutageReport {
    /// How long Redis was down (kill to restarted and answering).
    pub down_for: Duration,
    /// Logical requests started after Redis was back.
    pub started_after: u64,
    /// Of those, succeeded.
    pub succeeded_after: u64,
}

/// What happened to the request whose server was killed mid-handler.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CrashReport {
    /// The logical request.
    pub id: u64,
    /// The instance killed mid-handler (none: the stall was never reached).
    pub killed: Option<String>,
    /// The instances that applied the request's effect.
    pub applied_by: Vec<String>,
    /// Whether the client reported it as succeeded.
    pub succeeded: bool,
    /// kneo's attempts for it.
    pub attempts: u64,
    /// Other requests the killed instance had applied, but not yet
    /// recorded, when it died: their retries ran them again on the other
    /// instance once the lease ended. This is the documented limit of a
    /// record kept outside the handler's transaction (kneo-server's README;
    /// the transactional Postgres mode closes it), so they are counted here
    /// instead of as duplicates, and bounded by the requests in flight.
    pub rerun_after_kill: Vec<u64>,
    /// Requests in flight at once: at most this many can be lost with the
    /// killed instance.
    pub in_flight: usize,
}

impl Report {
    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Everything that breaks the promise; empty when the run proves it.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("{}: {n} {what}", self.workload));
            }
        };
        check(self.duplicate_requests, "requests applied more than once");
        check(self.duplicate_keys, "keys applied more than once");
        check(
            self.succeeded_without_one_effect,
            "succeeded requests without exactly one effect",
        );
        check(self.wrong_response, "responses for another request");
        check(
            self.misreported_failures,
            "failures misreporting what was sent",
        );
        check(self.hung, "requests hung past their bound");
        if let Some(crash) = &self.crash {
            let survivor_once = crash.applied_by.len() == 1
                && crash.killed.is_some()
                && crash.killed.as_ref() != crash.applied_by.first();
            if !(survivor_once && crash.succeeded) {
                v.push(format!(
                    "{}: request {} (killed mid-handler on {:?}) applied by {:?}, succeeded {}",
                    self.workload, crash.id, crash.killed, crash.applied_by, crash.succeeded
                ));
            }
            // Only work in flight on the killed instance can be lost with it.
            if crash.rerun_after_kill.len() > crash.in_flight {
                v.push(format!(
                    "{}: {} requests ran again after the kill, more than the {} in flight",
                    self.workload,
                    crash.rerun_after_kill.len(),
                    crash.in_flight
                ));
            }
        }
        let accounted = self.succeeded + self.failed() + self.hung;
        if accounted != self.requests {
            v.push(format!(
                "{}: {} requests sent, {accounted} accounted for",
                self.workload, self.requests
            ));
        }
        v
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload {}: seed {}, fault rate {}, {:.1} s",
            self.workload,
            self.seed,
            self.fault_rate,
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
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  connections by fault: {}", faults.join(", "))?;
        writeln!(
            f,
            "  effects {}, duplicates {} (requests) {} (keys)",
            self.effects, self.duplicate_requests, self.duplicate_keys
        )?;
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "  failures by kind: {}",
            if failures.is_empty() {
                "none".to_owned()
            } else {
                failures.join(", ")
            }
        )?;
        write!(
            f,
            "  failed but applied {}, succeeded without one effect {}, wrong response {}, misreported failures {}",
            self.failed_but_applied,
            self.succeeded_without_one_effect,
            self.wrong_response,
            self.misreported_failures
        )?;
        if let Some(outage) = &self.outage {
            write!(
                f,
                "\n  redis down {:.2} s: {} answers 503 (store unavailable); after the restart {} of {} requests succeeded",
                outage.down_for.as_secs_f64(),
                self.store_unavailable,
                outage.succeeded_after,
                outage.started_after
            )?;
        }
        if let Some(crash) = &self.crash {
            write!(
                f,
                "\n  crash: request {} stalled on {}, killed; applied by {:?}, succeeded {} after {} attempts",
                crash.id,
                crash.killed.as_deref().unwrap_or("(none)"),
                crash.applied_by,
                crash.succeeded,
                crash.attempts
            )?;
            if !crash.rerun_after_kill.is_empty() {
                write!(
                    f,
                    "\n  applied by the killed instance but not yet recorded, so run again after the lease: {:?}",
                    crash.rerun_after_kill
                )?;
            }
        }
        Ok(())
    }
}

/// The attempts of one logical request: kneo's, summed over the caller's
/// resends, and the resends.
#[derive(Debug, Default, Clone, Copy)]
struct Tries {
    attempts: u64,
    caller_retries: u64,
}

/// One logical request: `POST /charges {"id": id}` through `svc`; when it
/// fails replay-safe with a key (a body that broke off after a 201), sent
/// again with that key, up to `caller_retries` times, as a caller would.
async fn logical<S>(mut svc: S, url: &str, id: u64, caller_retries: u32) -> (Outcome, Tries)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = kneo::Error>,
{
    let mut tries = Tries::default();
    let mut key: Option<String> = None;
    loop {
        let outcome = send(&mut svc, url, id, key.as_deref()).await;
        match &outcome {
            Outcome::Succeeded { attempts, .. } => tries.attempts += u64::from(*attempts),
            Outcome::Failed(err) => {
                tries.attempts += u64::from(err.attempts().max(1));
                let resend =
                    err.is_replay_safe() && tries.caller_retries < u64::from(caller_retries);
                if let Some(k) = err.idempotency_key().filter(|_| resend) {
                    key = Some(k.to_owned());
                    tries.caller_retries += 1;
                    continue;
                }
            }
            Outcome::Hung => {}
        }
        return (outcome, tries);
    }
}

/// One call through kneo's stack, and the body read.
async fn send<S>(svc: &mut S, url: &str, id: u64, key: Option<&str>) -> Outcome
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = kneo::Error>,
{
    // One request per connection end to end: the relay reads a response to
    // end of stream, and a proxy in front of the server closes on this.
    let mut req = Request::post(url)
        .header("connection", "close")
        .header("authorization", "Bearer faults")
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req
        .body(Full::new(Bytes::from(format!(r#"{{"id":{id}}}"#))))
        .expect("valid request");
    let res = match svc.ready().await {
        Ok(svc) => svc.call(req).await,
        Err(e) => Err(e),
    };
    let res = match res {
        Ok(res) => res,
        Err(e) => return Outcome::Failed(e),
    };
    let attempts = res
        .extensions()
        .get::<Attempts>()
        .map_or(1, Attempts::count);
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let sent = res
        .extensions()
        .get::<Sent>()
        .cloned()
        .unwrap_or_else(|| Sent::new(Method::POST));
    match res.into_body().collect().await {
        Ok(body) => Outcome::Succeeded {
            attempts,
            replayed,
            echoed_id: serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
                .ok()
                .and_then(|v| v["id"].as_u64()),
        },
        // As `kneo::Client::read_bytes` reports a body that breaks off.
        Err(e) => Outcome::Failed(kneo::Error::network(e, sent)),
    }
}

/// How one logical request ended.
enum Outcome {
    Succeeded {
        attempts: u32,
        replayed: bool,
        echoed_id: Option<u64>,
    },
    Failed(kneo::Error),
    Hung,
}

type Transport = hyper_util::client::legacy::Client<HttpConnector, ReplayBody<Full<Bytes>>>;

/// hyper-util's client with no idle connections kept, so every attempt opens
/// a connection and meets a fresh fault.
fn transport() -> Transport {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(http)
}

/// kneo's stack as the workload uses it: `max_attempts`, a 1 ms backoff
/// base, no retry budget (the default `RetryQuota` would rightly stop
/// retrying in a sustained fault storm, which is not what is measured here),
/// and keys on or off.
fn layer(workload: Workload, options: &Options) -> ClientLayer {
    let layer = ClientLayer::new()
        .retry(crate::fast_retry())
        .max_attempts(options.max_attempts)
        .attempt_timeout(options.attempt_timeout)
        .deadline(options.deadline)
        .no_budget();
    if workload.keyed() {
        layer
    } else {
        layer.idempotency(IdempotencyKeyLayer::new().methods([]))
    }
}

/// The servers of a run, kept alive for it and stopped on drop.
#[derive(Default)]
struct Servers {
    in_process: Vec<FaultServer>,
    processes: Vec<ServerProcess>,
    sidecar: Option<Sidecar>,
    redis: Option<Arc<Mutex<RedisServer>>>,
    /// The crash's stall marker (a directory the first instance makes),
    /// removed with the servers.
    stall_marker: Option<PathBuf>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(marker) = &self.stall_marker {
            let _ = std::fs::remove_dir_all(marker);
        }
    }
}

impl Servers {
    /// Where the relay sends connections.
    fn targets(&self) -> Vec<std::net::SocketAddr> {
        if let Some(sidecar) = &self.sidecar {
            return vec![sidecar.addr()];
        }
        let processes = self.processes.iter().map(ServerProcess::addr);
        self.in_process
            .iter()
            .map(FaultServer::addr)
            .chain(processes)
            .collect()
    }
}

/// Starts what `workload` runs against; `None` (with the reason printed)
/// when it cannot run here.
async fn servers(workload: Workload, options: &Options, effects: &Arc<Effects>) -> Option<Servers> {
    let mut servers = Servers::default();
    let memory = || IdempotencyLayer::new(MemoryStore::new()).lease(options.lease);
    match workload {
        Workload::Keyed | Workload::Unkeyed => {
            servers
                .in_process
                .push(FaultServer::start(memory(), effects.clone()).await);
        }
        Workload::Proxied => {
            let Some(kneo) = &options.kneo else {
                println!("skipped: workload 4 needs the kneo binary (cargo build -p kneo-cli)");
                return None;
            };
            let server = FaultServer::start(memory(), effects.clone()).await;
            let upstream = format!("http://{}", server.addr());
            let sidecar = Sidecar::start(kneo, &upstream, &[])
                .await
                .unwrap_or_else(|e| panic!("kneo proxy: {e}"));
            servers.sidecar = Some(sidecar);
            servers.in_process.push(server);
        }
        Workload::KeyedRedis => {
            let redis = if options.outage.is_some() {
                RedisServer::start_durable()?
            } else {
                RedisServer::start()?
            };
            if let Some(bin) = &options.server_processes {
                let stall = options.crash.map(|id| Stall {
                    id,
                    marker: std::env::temp_dir().join(format!(
                        "kneo-stall-{}-{}",
                        std::process::id(),
                        fastrand::u64(..)
                    )),
                });
                servers.stall_marker = stall.as_ref().map(|s| s.marker.clone());
                for name in ["a", "b"] {
                    let process = ServerProcess::start(
                        bin,
                        name,
                        &redis.url(),
                        options.lease,
                        stall.as_ref(),
                        effects.clone(),
                    )
                    .await;
                    servers.processes.push(process);
                }
            } else {
                let store = RedisStore::builder(redis.url())
                    .prefix("faults:")
                    .connect()
                    .await
                    .expect("redis store connects");
                for _ in 0..2 {
                    let layer = IdempotencyLayer::new(store.clone()).lease(options.lease);
                    servers
                        .in_process
                        .push(FaultServer::start(layer, effects.clone()).await);
                }
            }
            servers.redis = Some(Arc::new(Mutex::new(redis)));
        }
    }
    Some(servers)
}

/// Kills Redis once `outage.after` logical requests have started, and
/// restarts it `outage.down` later; returns when it was down and back.
async fn inject_outage(
    redis: Arc<Mutex<RedisServer>>,
    started: Arc<AtomicU64>,
    outage: Outage,
) -> (Instant, Instant) {
    while started.load(Ordering::SeqCst) < outage.after {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let down_at = Instant::now();
    let stop = redis.clone();
    tokio::task::spawn_blocking(move || stop.lock().expect("not poisoned").stop())
        .await
        .expect("stopping redis does not panic");
    tokio::time::sleep(outage.down).await;
    tokio::task::spawn_blocking(move || redis.lock().expect("not poisoned").restart())
        .await
        .expect("restarting redis does not panic");
    (down_at, Instant::now())
}

/// Runs `workload`; `None` (with the reason printed) when it cannot run here
/// (workload 2 without `redis-server`, outside CI; workload 4 without
/// [`Options::kneo`]).
pub async fn run(workload: Workload, options: &Options) -> Option<Report> {
    let effects = Arc::new(Effects::default());
    let servers = servers(workload, options, &effects).await?;
    let relay = FaultRelay::start(servers.targets(), options.faults.clone()).await;
    let svc = layer(workload, options).layer(transport());
    let url = format!("http://{}/charges", relay.addr());
    let started = Arc::new(AtomicU64::new(0));
    let outage = match (options.outage, &servers.redis) {
        (Some(outage), Some(redis)) => Some(tokio::spawn(inject_outage(
            redis.clone(),
            started.clone(),
            outage,
        ))),
        _ => None,
    };
    let began = Instant::now();
    let outcomes: Vec<(u64, Instant, Outcome, Tries)> =
        futures_util::stream::iter(0..options.requests)
            .map(|id| {
                let (svc, url, started) = (svc.clone(), url.clone(), started.clone());
                let caller_retries = if workload.keyed() {
                    options.caller_retries
                } else {
                    0
                };
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let at = Instant::now();
                    let logical = logical(svc, &url, id, caller_retries);
                    match tokio::time::timeout(options.hang_after, logical).await {
                        Ok((outcome, tries)) => (id, at, outcome, tries),
                        Err(_) => (id, at, Outcome::Hung, Tries::default()),
                    }
                }
            })
            .buffer_unordered(options.concurrency)
            .collect()
            .await;
    let elapsed = began.elapsed();
    let outage = match outage {
        Some(task) => Some(task.await.expect("the outage task does not panic")),
        None => None,
    };

    let mut report = Report {
        workload: workload.as_str(),
        seed: options.faults.seed,
        fault_rate: options.faults.rate,
        requests: options.requests,
        elapsed,
        ..Report::default()
    };
    if let Some((down_at, up_at)) = outage {
        report.outage = Some(OutageReport {
            down_for: up_at - down_at,
            ..OutageReport::default()
        });
    }
    if let Some(id) = options.crash {
        report.crash = Some(CrashReport {
            id,
            killed: servers
                .processes
                .iter()
                .find(|p| p.was_killed())
                .map(|p| p.name().to_owned()),
            in_flight: options.concurrency,
            ..CrashReport::default()
        });
    }
    // A request applied once by the killed instance and once by the other.
    let rerun_after_kill: Vec<u64> = match report.crash.as_mut() {
        Some(crash) => {
            let killed = crash.killed.clone();
            crash.rerun_after_kill = effects
                .duplicate_requests()
                .into_iter()
                .filter(|&(id, n)| {
                    let by = effects.instances_of(id);
                    // First on the killed instance (its journal lines came
                    // before it died), then on the other after the lease.
                    n == 2 && by.len() == 2 && Some(&by[0]) == killed.as_ref() && by[0] != by[1]
                })
                .map(|(id, _)| id)
                .collect();
            crash.rerun_after_kill.clone()
        }
        None => Vec::new(),
    };
    for (id, at, outcome, tries) in outcomes {
        let applied = effects.of_request(id);
        report.attempts += tries.attempts;
        report.caller_retries += tries.caller_retries;
        let after_outage = outage.is_some_and(|(_, up_at)| at >= up_at);
        if let Some(outage) = report.outage.as_mut().filter(|_| after_outage) {
            outage.started_after += 1;
            outage.succeeded_after += u64::from(matches!(outcome, Outcome::Succeeded { .. }));
        }
        if let Some(crash) = report.crash.as_mut().filter(|c| c.id == id) {
            crash.succeeded = matches!(outcome, Outcome::Succeeded { .. });
            crash.attempts = tries.attempts;
            crash.applied_by = effects.instances_of(id);
        }
        match outcome {
            Outcome::Succeeded {
                replayed,
                echoed_id,
                ..
            } => {
                report.succeeded += 1;
                report.replayed += u64::from(replayed);
                if applied != 1 && !(applied == 2 && rerun_after_kill.contains(&id)) {
                    report.succeeded_without_one_effect += 1;
                }
                if echoed_id != Some(id) {
                    report.wrong_response += 1;
                }
            }
            Outcome::Failed(err) => {
                let said = if err.is_connect() {
                    "not_sent"
                } else if err.is_replay_safe() {
                    "replay_safe"
                } else {
                    "may_be_applied"
                };
                *report
                    .failures
                    .entry(format!("{}/{said}", err.kind().as_str()))
                    .or_default() += 1;
                if applied > 0 {
                    report.failed_but_applied += 1;
                }
                let misreported = (err.is_connect() && applied > 0)
                    || (workload.keyed() && err.idempotency_key().is_none())
                    || (!workload.keyed() && err.is_replay_safe());
                if misreported {
                    report.misreported_failures += 1;
                }
            }
            Outcome::Hung => report.hung += 1,
        }
    }
    report.effects = effects.total();
    let mut duplicates = effects.duplicate_requests();
    duplicates.retain(|(id, _)| !rerun_after_kill.contains(id));
    let rerun = rerun_after_kill.len() as u64;
    report.duplicate_requests = duplicates.len() as u64;
    // Workload 2 keys each logical request once (its resends reuse the key).
    report.duplicate_keys = (effects.duplicate_keys().len() as u64).saturating_sub(rerun);
    report.store_unavailable = effects.unavailable();
    for fault in Fault::ALL {
        report
            .faults
            .insert(fault.as_str(), relay.counts().get(fault));
    }
    drop(relay);
    drop(servers);
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each fault, alone on every connection, does to one unkeyed POST (one
    /// attempt) what the relay's docs say: the request reaches the server or
    /// not, the client gets its response or not.
    #[tokio::test]
    async fn each_fault_does_what_it_says() {
        // (fault, the client succeeds, effects on the server)
        let cases = [
            (Fault::Pass, true, 1),
            (Fault::Delay, true, 1),
            (Fault::ResetBeforeRequest, false, 0),
            (Fault::ResetAfterRequest, false, 1),
            (Fault::CutResponse, false, 1),
            (Fault::CutBody, false, 1),
        ];
        for (fault, succeeds, applied) in cases {
            let effects = Arc::new(Effects::default());
            let server =
                FaultServer::start(IdempotencyLayer::new(MemoryStore::new()), effects.clone())
                    .await;
            let mut mix = [0; 5];
            let config = match Fault::ALL.iter().position(|f| *f == fault) {
                Some(0) | None => FaultConfig::new(0.0, 1),
                Some(i) => {
                    mix[i - 1] = 1;
                    FaultConfig::new(1.0, 1).mix(mix)
                }
            };
            let relay = FaultRelay::start(vec![server.addr()], config).await;
            let options = Options::new(1, 0.0, 1);
            let mut svc = layer(Workload::Unkeyed, &options)
                .max_attempts(1)
                .layer(transport());
            let url = format!("http://{}/charges", relay.addr());
            let outcome = send(&mut svc, &url, 7, None).await;
            match (&outcome, succeeds) {
                (Outcome::Succeeded { echoed_id, .. }, true) => {
                    assert_eq!(*echoed_id, Some(7), "{fault:?}");
                }
                (Outcome::Failed(err), false) => {
                    assert_eq!(err.kind(), kneo::ErrorKind::Network, "{fault:?}: {err}");
                    assert!(!err.is_replay_safe(), "{fault:?}: an unkeyed POST");
                    if applied > 0 {
                        assert!(!err.is_connect(), "{fault:?}: applied, so it was sent");
                    }
                }
                (Outcome::Succeeded { .. }, false) => panic!("{fault:?}: succeeded"),
                (Outcome::Failed(err), true) => panic!("{fault:?}: {err}"),
                (Outcome::Hung, _) => unreachable!("send has no hang bound"),
            }
            assert_eq!(effects.of_request(7), applied, "{fault:?}");
            assert_eq!(
                relay.counts().get(fault),
                relay.counts().total(),
                "{fault:?}"
            );
        }
    }
}
