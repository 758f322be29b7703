//! The hang-up workload: callers that give up. Each logical request is a
//! keyed `POST /charges` with a key of its own; its caller hangs up on an
//! attempt at a seeded random [`Point`] (before the body is all sent, while
//! the handler runs, while the response streams) or not at all, then sends
//! it again with the same key until it has the final answer: the 201 or its
//! replay. A `409 idempotency_key_in_use` (the first run still going) is
//! sent again after its `Retry-After`, as kneo's client does.
//!
//! ```no_run
//! use kneo_tests::faults::{run_hangup, HangupOptions, Target};
//!
//! # async fn demo() {
//! let options = HangupOptions::new(1_000, 7);
//! let report = run_hangup(Target::Memory, &options).await.expect("runs here");
//! println!("{report}");
//! assert!(report.violations().is_empty(), "{:?}", report.violations());
//! # }
//! ```
//!
//! The server is a [`SlowServer`]: it waits, records one effect per run,
//! waits again and streams its 201 in four chunks, all paced by the request
//! body, so a hang-up lands before, inside and after the effect. What must
//! hold: every request has exactly one effect (no duplicate, none lost), and
//! every caller's final answer is the body of that one run, byte for byte,
//! first answer or replay.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore};

use super::caller::{attempt, Abandon, Attempt, Point};
use super::server::Effects;
use super::slow::{Charge, SlowServer};
use crate::redis::RedisServer;
use crate::sidecar::Sidecar;

/// What the callers hang up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// The handler in process behind `IdempotencyLayer` on a `MemoryStore`.
    Memory,
    /// The same on a `RedisStore` (a real `redis-server`).
    Redis,
    /// The real `kneo proxy --idempotency memory` in front of the bare
    /// handler; needs [`HangupOptions::kneo`].
    ProxyMemory,
    /// `kneo proxy --idempotency redis://…`.
    ProxyRedis,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 4] = [
        Target::Memory,
        Target::Redis,
        Target::ProxyMemory,
        Target::ProxyRedis,
    ];

    /// Its name: `memory`, `redis`, `proxy-memory`, `proxy-redis`.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Memory => "memory",
            Target::Redis => "redis",
            Target::ProxyMemory => "proxy-memory",
            Target::ProxyRedis => "proxy-redis",
        }
    }

    /// The target named `name` (as [`as_str`](Self::as_str) says it).
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether it runs `kneo proxy`.
    pub fn proxied(self) -> bool {
        matches!(self, Target::ProxyMemory | Target::ProxyRedis)
    }
}

/// How the hang-up workload runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HangupOptions {
    /// Logical requests.
    pub requests: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The seed of every request's pacing and hang-ups (request `id` draws
    /// from its own generator, so a request's plan does not depend on the
    /// order the requests run in).
    pub seed: u64,
    /// The weights of an attempt's end: read to its end, given up before
    /// the body, in the handler, while streaming.
    pub mix: [u32; 4],
    /// Hang-ups per logical request at most; later attempts are read to the end.
    pub max_abandons: u32,
    /// Attempts per logical request at most.
    pub max_attempts: u32,
    /// One attempt's bound (a guard, past which it counts as broken).
    pub attempt_timeout: Duration,
    /// One logical request's bound; past it, it is unfinished.
    pub hang_after: Duration,
    /// The `kneo` binary, for the proxied targets.
    pub kneo: Option<PathBuf>,
}

impl HangupOptions {
    /// `requests` seeded with `seed`: concurrency 32, an even mix, at most 2
    /// hang-ups and 30 attempts per request, 10 s per attempt, 60 s per
    /// request.
    pub fn new(requests: u64, seed: u64) -> Self {
        HangupOptions {
            requests,
            concurrency: 32,
            seed,
            mix: [1, 1, 1, 1],
            max_abandons: 2,
            max_attempts: 30,
            attempt_timeout: Duration::from_secs(10),
            hang_after: Duration::from_secs(60),
            kneo: None,
        }
    }

    /// Runs `kneo` for the proxied targets.
    pub fn kneo(mut self, kneo: impl Into<PathBuf>) -> Self {
        self.kneo = Some(kneo.into());
        self
    }

    /// Sets the concurrency.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets the attempts per logical request at most (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the mix: weights of no hang-up, before the body, in the handler,
    /// while streaming.
    pub fn mix(mut self, mix: [u32; 4]) -> Self {
        self.mix = mix;
        self
    }
}

/// What a hang-up run did, and what it proves.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HangupReport {
    /// The target's name.
    pub target: &'static str,
    /// The seed.
    pub seed: u64,
    /// Logical requests.
    pub requests: u64,
    /// Attempts over all requests (retries are `attempts - requests`).
    pub attempts: u64,
    /// Attempts given up, by [`Point::as_str`].
    pub abandoned: BTreeMap<&'static str, u64>,
    /// `409 idempotency_key_in_use` answers (the first run still going).
    pub in_use: u64,
    /// `503` answers (refused, not run).
    pub unavailable: u64,
    /// Attempts that got no whole response without hanging up.
    pub broken: u64,
    /// Requests whose final answer was the first run's own response.
    pub first_answers: u64,
    /// Requests whose final answer was a replay (`Idempotent-Replayed: true`).
    pub replays: u64,
    /// Effects the handler applied.
    pub effects: u64,
    /// Requests applied more than once (must be 0).
    pub duplicates: u64,
    /// Keys applied more than once (must be 0).
    pub duplicate_keys: u64,
    /// Requests never applied (must be 0).
    pub lost: u64,
    /// Final answers whose body was not the one run's, byte for byte (must be 0).
    pub wrong_body: u64,
    /// Requests that ended on another status, by status (must be none).
    pub unexpected: BTreeMap<u16, u64>,
    /// Requests without a final answer within their bounds (must be 0).
    pub unfinished: u64,
    /// Of those, requests whose handler never began while their key
    /// answered `409 idempotency_key_in_use`: a claim that nothing runs
    /// under, held until its lease ends.
    pub held_without_run: u64,
    /// A few of the requests behind the figures that must be 0, for reading.
    pub examples: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl HangupReport {
    /// Retries: attempts after each request's first.
    pub fn retries(&self) -> u64 {
        self.attempts.saturating_sub(self.requests)
    }

    /// Hang-ups at `point`.
    pub fn abandoned_at(&self, point: Point) -> u64 {
        self.abandoned.get(point.as_str()).copied().unwrap_or(0)
    }

    /// Everything that breaks the promise or leaves a caller without its
    /// answer; empty when the run proves it.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.safety_violations();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("hang-up {}: {n} {what}", self.target));
            }
        };
        check(self.lost, "requests never applied");
        check(self.unfinished, "requests without a final answer");
        let ended = self.first_answers
            + self.replays
            + self.wrong_body
            + self.unfinished
            + self.unexpected.values().sum::<u64>();
        if ended != self.requests {
            v.push(format!(
                "hang-up {}: {} requests sent, {ended} accounted for",
                self.target, self.requests
            ));
        }
        v
    }

    /// What breaks the promise itself: a request run twice, a caller handed
    /// another body than its one run's, a request ended on a status it
    /// should not have. (Not: a request that never got its answer.)
    pub fn safety_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("hang-up {}: {n} {what}", self.target));
            }
        };
        check(self.duplicates, "requests applied more than once");
        check(self.duplicate_keys, "keys applied more than once");
        check(self.wrong_body, "final answers with another body");
        for (status, n) in &self.unexpected {
            v.push(format!(
                "hang-up {}: {n} requests ended on {status}",
                self.target
            ));
        }
        v
    }
}

impl fmt::Display for HangupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "hang-up workload {}: seed {}, {:.1} s",
            self.target,
            self.seed,
            self.elapsed.as_secs_f64()
        )?;
        let abandoned: Vec<String> = Point::ALL
            .iter()
            .map(|p| format!("{} {}", p.as_str(), self.abandoned_at(*p)))
            .collect();
        writeln!(
            f,
            "  logical requests {}, attempts {} (retries {}); hung up: {}",
            self.requests,
            self.attempts,
            self.retries(),
            abandoned.join(", ")
        )?;
        writeln!(
            f,
            "  409 in use {}, 503 {}, broken {}; final answers: first {}, replayed {}",
            self.in_use, self.unavailable, self.broken, self.first_answers, self.replays
        )?;
        let unexpected: Vec<String> = self
            .unexpected
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        write!(
            f,
            "  effects {}, duplicates {} (requests) {} (keys), lost {}, wrong bodies {}, unexpected {}, unfinished {} (of which held by a claim that never ran {})",
            self.effects,
            self.duplicates,
            self.duplicate_keys,
            self.lost,
            self.wrong_body,
            if unexpected.is_empty() { "none".to_owned() } else { unexpected.join(", ") },
            self.unfinished,
            self.held_without_run
        )?;
        for example in &self.examples {
            write!(f, "\n  e.g. {example}")?;
        }
        Ok(())
    }
}

/// What one logical request came to.
#[derive(Debug, Default)]
struct Logical {
    attempts: u64,
    abandoned: BTreeMap<Point, u64>,
    in_use: u64,
    unavailable: u64,
    broken: u64,
    end: End,
}

#[derive(Debug, Default)]
enum End {
    First,
    Replay,
    WrongBody(String),
    Unexpected(u16, String),
    #[default]
    Unfinished,
}

/// What a run's callers talk to, kept alive for it.
struct Stack {
    server: SlowServer,
    sidecar: Option<Sidecar>,
    _redis: Option<RedisServer>,
}

impl Stack {
    fn addr(&self) -> SocketAddr {
        self.sidecar
            .as_ref()
            .map_or(self.server.addr(), Sidecar::addr)
    }
}

/// Starts `target`; `None` (with the reason printed) when it cannot run here.
async fn stack(target: Target, options: &HangupOptions, effects: &Arc<Effects>) -> Option<Stack> {
    let redis = match target {
        Target::Redis | Target::ProxyRedis => Some(RedisServer::start()?),
        Target::Memory | Target::ProxyMemory => None,
    };
    let (server, sidecar) = match target {
        Target::Memory => {
            let layer = IdempotencyLayer::new(MemoryStore::new());
            (SlowServer::start(layer, effects.clone()).await, None)
        }
        Target::Redis => {
            let url = redis.as_ref().map(RedisServer::url)?;
            let store = RedisStore::builder(url)
                .prefix("hangup:")
                .connect()
                .await
                .expect("redis store connects");
            let layer = IdempotencyLayer::new(store);
            (SlowServer::start(layer, effects.clone()).await, None)
        }
        Target::ProxyMemory | Target::ProxyRedis => {
            let Some(kneo) = &options.kneo else {
                println!(
                    "skipped: the proxied targets need the kneo binary (cargo build -p kneo-cli)"
                );
                return None;
            };
            let server = SlowServer::bare(effects.clone()).await;
            let upstream = format!("http://{}", server.addr());
            let store = redis
                .as_ref()
                .map_or_else(|| "memory".to_owned(), RedisServer::url);
            let sidecar = Sidecar::start(kneo, &upstream, &["--idempotency", &store])
                .await
                .unwrap_or_else(|e| panic!("kneo proxy: {e}"));
            (server, Some(sidecar))
        }
    };
    Some(Stack {
        server,
        sidecar,
        _redis: redis,
    })
}

/// Runs the hang-up workload against `target`; `None` (with the reason
/// printed) when it cannot run here (Redis without `redis-server`, outside
/// CI; the proxied targets without [`HangupOptions::kneo`]).
pub async fn run_hangup(target: Target, options: &HangupOptions) -> Option<HangupReport> {
    let effects = Arc::new(Effects::default());
    let stack = stack(target, options, &effects).await?;
    let addr = stack.addr();
    let began = Instant::now();
    let ended: Vec<(u64, Logical)> = futures_util::stream::iter(0..options.requests)
        .map(|id| async move {
            let logical = logical(addr, options, id);
            match tokio::time::timeout(options.hang_after, logical).await {
                Ok(logical) => (id, logical),
                Err(_) => (id, Logical::default()),
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let elapsed = began.elapsed();
    // A run a hang-up let loose would land after its request's final
    // answer: give the slowest handler (20 + 20 ms, 3 gaps of 5) its time.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut report = HangupReport {
        target: target.as_str(),
        seed: options.seed,
        requests: options.requests,
        elapsed,
        ..HangupReport::default()
    };
    let example = |report: &mut HangupReport, line: String| {
        if report.examples.len() < 8 {
            report.examples.push(line);
        }
    };
    for (id, logical) in ended {
        report.attempts += logical.attempts;
        for (point, n) in &logical.abandoned {
            *report.abandoned.entry(point.as_str()).or_default() += n;
        }
        report.in_use += logical.in_use;
        report.unavailable += logical.unavailable;
        report.broken += logical.broken;
        match logical.end {
            End::First => report.first_answers += 1,
            End::Replay => report.replays += 1,
            End::WrongBody(body) => {
                report.wrong_body += 1;
                let first_line = body.lines().next().unwrap_or_default();
                example(
                    &mut report,
                    format!("request {id}: final answer begins {first_line}"),
                );
            }
            End::Unexpected(status, body) => {
                *report.unexpected.entry(status).or_default() += 1;
                example(&mut report, format!("request {id}: {status} {body}"));
            }
            End::Unfinished => {
                report.unfinished += 1;
                let runs = stack.server.runs(id).started;
                if runs == 0 && logical.in_use > 0 {
                    report.held_without_run += 1;
                }
                let hung_up: Vec<&str> = logical.abandoned.keys().map(|p| p.as_str()).collect();
                example(
                    &mut report,
                    format!(
                        "request {id}: unfinished after {} attempts ({} answered 409), {runs} runs began (hung up {hung_up:?})",
                        logical.attempts, logical.in_use
                    ),
                );
            }
        }
        match effects.of_request(id) {
            0 => {
                report.lost += 1;
                example(&mut report, format!("request {id}: never applied"));
            }
            1 => {}
            n => {
                let hung_up: Vec<&str> = logical.abandoned.keys().map(|p| p.as_str()).collect();
                example(
                    &mut report,
                    format!("request {id}: applied {n} times (hung up {hung_up:?})"),
                );
            }
        }
    }
    report.effects = effects.total();
    report.duplicates = effects.duplicate_requests().len() as u64;
    report.duplicate_keys = effects.duplicate_keys().len() as u64;
    drop(stack);
    Some(report)
}

/// One logical request, `id`, to its final answer: its own seeded plan of
/// pacing and hang-ups, and a retry with the same key after each hang-up,
/// `409` or broken attempt.
async fn logical(addr: SocketAddr, options: &HangupOptions, id: u64) -> Logical {
    let mut rng = fastrand::Rng::with_seed(options.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let charge = Charge::new(id, rng.u64(0..=20), rng.u64(0..=20), rng.u64(1..=5));
    let body = charge.body();
    let key = format!("hangup-{}-{id}", options.seed);
    let handler_ms = charge.pre_ms + charge.post_ms;
    let mut logical = Logical::default();
    let mut abandons = 0;
    while logical.attempts < u64::from(options.max_attempts) {
        let abandon = if abandons < options.max_abandons {
            pick(&mut rng, options.mix, body.len(), handler_ms)
        } else {
            None
        };
        logical.attempts += 1;
        let answer = match attempt(addr, &key, &body, abandon, options.attempt_timeout).await {
            Attempt::Abandoned(point) => {
                abandons += 1;
                *logical.abandoned.entry(point).or_default() += 1;
                // A caller's own backoff: some retries find the run still
                // going, some its record.
                tokio::time::sleep(Duration::from_millis(rng.u64(0..=handler_ms + 20))).await;
                continue;
            }
            Attempt::Broken(_) => {
                logical.broken += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Attempt::Answer(answer) => answer,
        };
        let wait = answer.retry_after().unwrap_or(Duration::from_secs(1));
        match answer.status {
            201 if answer.body != charge.expected() => {
                let body = String::from_utf8_lossy(&answer.body).into_owned();
                logical.end = End::WrongBody(body);
                return logical;
            }
            201 if answer.replayed() => {
                logical.end = End::Replay;
                return logical;
            }
            201 => {
                logical.end = End::First;
                return logical;
            }
            409 if answer.code().as_deref() == Some(kneo::codes::IDEMPOTENCY_KEY_IN_USE) => {
                logical.in_use += 1;
                tokio::time::sleep(wait).await;
            }
            503 => {
                logical.unavailable += 1;
                tokio::time::sleep(wait).await;
            }
            status => {
                let body = String::from_utf8_lossy(&answer.body).into_owned();
                logical.end = End::Unexpected(status, body);
                return logical;
            }
        }
    }
    logical
}

/// An attempt's end, drawn from `mix`: `None` to read it to its end.
fn pick(
    rng: &mut fastrand::Rng,
    mix: [u32; 4],
    body_len: usize,
    handler_ms: u64,
) -> Option<Abandon> {
    let total: u32 = mix.iter().sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.u32(0..total);
    let slot = mix
        .iter()
        .position(|w| {
            if draw < *w {
                true
            } else {
                draw -= w;
                false
            }
        })
        .expect("invariant: the draw is below the total");
    match slot {
        1 => Some(Abandon::BeforeBody {
            sent: rng.usize(0..body_len.max(1)),
            after: Duration::from_millis(rng.u64(0..=5)),
        }),
        2 => Some(Abandon::InHandler {
            after: Duration::from_millis(rng.u64(0..=handler_ms + 5)),
        }),
        3 => Some(Abandon::WhileStreaming {
            read: rng.usize(1..=300),
        }),
        _ => None,
    }
}
