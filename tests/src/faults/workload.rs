//! The workloads: logical requests through kneo's `ClientLayer`, over the
//! [`FaultRelay`], to [`FaultServer`]s; and the [`Report`] of what happened.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::idempotency::{IdempotencyKey, IdempotencyKeyLayer};
use kneo::retry::ReplayBody;
use kneo::{Attempts, ClientLayer, Sent};
use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore};
use tower::{Layer, Service, ServiceExt};

use super::relay::{Fault, FaultConfig, FaultRelay};
use super::server::{Effects, FaultServer};
use crate::redis::RedisServer;

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
}

impl Workload {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Keyed => "1 keyed/memory",
            Workload::KeyedRedis => "2 keyed/redis x2",
            Workload::Unkeyed => "3 unkeyed",
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
        }
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
    /// Wall time.
    pub elapsed: Duration,
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
        )
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
    let mut req = Request::post(url)
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
    let mut sent = Sent::new(Method::POST);
    if let Some(key) = res.extensions().get::<IdempotencyKey>() {
        sent = sent.with_idempotency_key(key.as_str());
    }
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

/// Runs `workload`; `None` (with the reason printed) when it cannot run here
/// (workload 2 without `redis-server`, outside CI).
pub async fn run(workload: Workload, options: &Options) -> Option<Report> {
    let effects = Arc::new(Effects::default());
    // Kept alive for the run; dropped (stopped) at the end.
    let mut servers = Vec::new();
    let mut redis = None;
    match workload {
        Workload::Keyed | Workload::Unkeyed => {
            let layer = IdempotencyLayer::new(MemoryStore::new());
            servers.push(FaultServer::start(layer, effects.clone()).await);
        }
        Workload::KeyedRedis => {
            let server = RedisServer::start()?;
            let store = RedisStore::builder(server.url())
                .prefix("faults:")
                .connect()
                .await
                .expect("redis store connects");
            for _ in 0..2 {
                let layer = IdempotencyLayer::new(store.clone());
                servers.push(FaultServer::start(layer, effects.clone()).await);
            }
            redis = Some(server);
        }
    }
    let relay = FaultRelay::start(
        servers.iter().map(FaultServer::addr).collect(),
        options.faults.clone(),
    )
    .await;
    let svc = layer(workload, options).layer(transport());
    let url = format!("http://{}/charges", relay.addr());
    let started = Instant::now();
    let outcomes: Vec<(u64, Outcome, Tries)> = futures_util::stream::iter(0..options.requests)
        .map(|id| {
            let (svc, url) = (svc.clone(), url.clone());
            let caller_retries = if workload.keyed() {
                options.caller_retries
            } else {
                0
            };
            async move {
                let logical = logical(svc, &url, id, caller_retries);
                match tokio::time::timeout(options.hang_after, logical).await {
                    Ok((outcome, tries)) => (id, outcome, tries),
                    Err(_) => (id, Outcome::Hung, Tries::default()),
                }
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut report = Report {
        workload: workload.as_str(),
        seed: options.faults.seed,
        fault_rate: options.faults.rate,
        requests: options.requests,
        elapsed,
        ..Report::default()
    };
    for (id, outcome, tries) in outcomes {
        let applied = effects.of_request(id);
        report.attempts += tries.attempts;
        report.caller_retries += tries.caller_retries;
        match outcome {
            Outcome::Succeeded {
                replayed,
                echoed_id,
                ..
            } => {
                report.succeeded += 1;
                report.replayed += u64::from(replayed);
                if applied != 1 {
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
    report.duplicate_requests = effects.duplicate_requests().len() as u64;
    report.duplicate_keys = effects.duplicate_keys().len() as u64;
    for fault in Fault::ALL {
        report
            .faults
            .insert(fault.as_str(), relay.counts().get(fault));
    }
    drop(relay);
    drop(servers);
    drop(redis);
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
