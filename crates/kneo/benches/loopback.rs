//! Loopback load: a hyper server on `127.0.0.1:0` answering a small JSON
//! body, and C concurrent callers sending M requests through
//!
//! - (a) a bare hyper-util legacy client,
//! - (b) kneo's [`ClientLayer`] over the same kind of client,
//! - (c) reqwest + reqwest-middleware + reqwest-retry (exponential backoff,
//!   3 attempts in all),
//!
//! in turns, in one process, after a warm-up pass of each. Every caller reads
//! the whole response body. Prints requests/s, p50 and p99 latency per pass,
//! then the median round of each client and the ratios b/a and b/c.
//!
//! Run: `cargo bench -p kneo --bench loopback`. Settings, as environment
//! variables or arguments (unknown arguments, like cargo's `--bench`, are
//! ignored):
//!
//! | variable | argument | default |
//! |---|---|---|
//! | `KNEO_BENCH_REQUESTS` | `--requests N` | 100000 per pass |
//! | `KNEO_BENCH_CONCURRENCY` | `--concurrency N` | 64 callers |
//! | `KNEO_BENCH_ROUNDS` | `--rounds N` | 5 rounds of (a), (b), (c) |
//! | `KNEO_BENCH_CLIENTS` | `--clients abc` | `abc`: all three (`b` alone, to profile the stack) |
//! | `KNEO_BENCH_RUNTIME` | | multi-threaded; `current` for one thread (instruction counts) |
//!
//! Bounded: each pass sends exactly M requests, each with a 10 s timeout
//! (a timed-out request counts as an error), and the process exits when the
//! last round is done.

#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo::{BoxError, ClientLayer};
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;
use tower::{Layer, Service, ServiceExt};

/// What the server answers to every request.
const BODY: &[u8] = br#"{"id":7,"status":"succeeded","model":"kneo-bench","created":1700000000}"#;
/// The longest one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Settings {
    requests: usize,
    concurrency: usize,
    rounds: usize,
    /// Which of (a), (b), (c) to run, as indexes 0, 1, 2.
    clients: Vec<usize>,
}

impl Settings {
    /// Environment first, then arguments; anything unknown is ignored.
    fn load() -> Settings {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let mut s = Settings {
            requests: env("KNEO_BENCH_REQUESTS", 100_000),
            concurrency: env("KNEO_BENCH_CONCURRENCY", 64),
            rounds: env("KNEO_BENCH_ROUNDS", 5),
            clients: clients(&std::env::var("KNEO_BENCH_CLIENTS").unwrap_or_default()),
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        for pair in args.windows(2) {
            let value = pair[1].parse().ok();
            match (pair[0].as_str(), value) {
                ("--requests", Some(v)) => s.requests = v,
                ("--concurrency", Some(v)) => s.concurrency = v,
                ("--rounds", Some(v)) => s.rounds = v,
                ("--clients", _) => s.clients = clients(&pair[1]),
                _ => {}
            }
        }
        s.requests = s.requests.max(1);
        s.concurrency = s.concurrency.clamp(1, s.requests);
        s.rounds = s.rounds.max(1);
        s
    }
}

/// `"ac"` → `[0, 2]`; nothing recognised → all three.
fn clients(spec: &str) -> Vec<usize> {
    let picked: Vec<usize> = (0..3)
        .filter(|&i| spec.contains(["a", "b", "c"][i]))
        .collect();
    if picked.is_empty() {
        vec![0, 1, 2]
    } else {
        picked
    }
}

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let res = Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("invariant: a static response is valid");
    Ok(res)
}

/// hyper-util's pooled client, configured as `kneo::Client` configures it.
fn transport<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

fn get<B>(uri: &Uri, body: B) -> Request<B> {
    Request::get(uri.clone())
        .header(ACCEPT, "application/json")
        .body(body)
        .expect("invariant: a GET with a valid URI is a valid request")
}

/// One way of sending a request and reading the whole response body.
trait Caller: Clone + Send + 'static {
    /// Sends one GET; returns how many body bytes were read.
    fn send(&mut self) -> impl Future<Output = Result<usize, BoxError>> + Send;
}

/// (a) hyper-util's client, bare.
#[derive(Clone)]
struct Bare {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
}

impl Caller for Bare {
    async fn send(&mut self) -> Result<usize, BoxError> {
        let res = self.client.request(get(&self.uri, Full::default())).await?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()).into());
        }
        Ok(res.into_body().collect().await?.to_bytes().len())
    }
}

type Stack = <ClientLayer as Layer<Client<HttpConnector, ReplayBody<Full<Bytes>>>>>::Service;

/// (b) the kneo stack over the same kind of client.
#[derive(Clone)]
struct Kneo {
    service: Stack,
    uri: Uri,
}

impl Caller for Kneo {
    async fn send(&mut self) -> Result<usize, BoxError> {
        let req = get(&self.uri, Full::default());
        // Non-success statuses are errors already (the error-mapping layer).
        let res = self.service.ready().await?.call(req).await?;
        Ok(res.into_body().collect().await?.to_bytes().len())
    }
}

/// (c) reqwest with reqwest-middleware's retry middleware.
#[derive(Clone)]
struct Reqwest {
    client: ClientWithMiddleware,
    url: String,
}

impl Caller for Reqwest {
    async fn send(&mut self) -> Result<usize, BoxError> {
        let res = self
            .client
            .get(&self.url)
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()).into());
        }
        Ok(res.bytes().await?.len())
    }
}

/// What one pass measured.
struct Pass {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// Sends `requests` requests from `concurrency` callers; waits for all.
async fn pass<C: Caller>(caller: &C, requests: usize, concurrency: usize) -> Pass {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut caller = caller.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests / concurrency + 1);
                let mut errors = 0;
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let sent = Instant::now();
                    match tokio::time::timeout(REQUEST_TIMEOUT, caller.send()).await {
                        Ok(Ok(n)) if n == BODY.len() => latencies.push(sent.elapsed()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("invariant: a caller task does not panic");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let at = |q: usize| {
        latencies
            .get((latencies.len() * q / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Pass {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(50),
        p99: at(99),
        errors,
    }
}

const NAMES: [&str; 3] = [
    "(a) hyper-util client, bare",
    "(b) kneo ClientLayer + hyper-util",
    "(c) reqwest + middleware + retry",
];

fn line(label: &str, p: &Pass) -> String {
    format!(
        "{label:<36} {:>10.0} req/s   p50 {:>7.1} µs   p99 {:>7.1} µs   errors {}",
        p.rps,
        p.p50.as_secs_f64() * 1e6,
        p.p99.as_secs_f64() * 1e6,
        p.errors
    )
}

async fn run(s: &Settings) {
    let addr = support::serve(answer).await;
    let uri: Uri = format!("http://{addr}/v1/runs/7")
        .parse()
        .expect("invariant: a socket address makes a valid URI");

    let bare = Bare {
        client: transport(),
        uri: uri.clone(),
    };
    let kneo = Kneo {
        service: ClientLayer::new().layer(transport()),
        uri: uri.clone(),
    };
    let retry = RetryTransientMiddleware::new_with_policy(
        ExponentialBackoff::builder().build_with_max_retries(2),
    );
    let reqwest = Reqwest {
        client: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(retry)
            .build(),
        url: uri.to_string(),
    };

    println!(
        "kneo loopback bench: {} requests per pass, {} callers, {} rounds; server on {addr}",
        s.requests, s.concurrency, s.rounds
    );
    let warmup = (s.requests / 10).max(s.concurrency * 10);
    println!("warm-up: {warmup} requests per client");
    for &which in &s.clients {
        one_pass(which, &bare, &kneo, &reqwest, warmup, s.concurrency).await;
    }

    let mut results: [Vec<Pass>; 3] = Default::default();
    let n = s.clients.len();
    for round in 0..s.rounds {
        println!("round {}", round + 1);
        // Rotate who goes first, so no client always runs on a cold or hot machine.
        for k in 0..n {
            let which = s.clients[(round + k) % n];
            let p = one_pass(which, &bare, &kneo, &reqwest, s.requests, s.concurrency).await;
            println!("  {}", line(NAMES[which], &p));
            results[which].push(p);
        }
    }

    println!();
    println!("median round of each client (by throughput):");
    for &which in &s.clients {
        println!("  {}", line(NAMES[which], median(&results[which])));
    }
    // The ratio of the medians, and the range of the per-round ratios (the
    // passes of one round ran back to back).
    let ratio = |num: usize, den: usize| {
        if results[num].is_empty() || results[den].is_empty() {
            return None;
        }
        let mut r: Vec<f64> = results[num]
            .iter()
            .zip(&results[den])
            .map(|(n, d)| n.rps / d.rps)
            .collect();
        r.sort_by(f64::total_cmp);
        let of_medians = median(&results[num]).rps / median(&results[den]).rps;
        Some((of_medians, r[0], r[r.len() - 1]))
    };
    println!();
    if let Some((m, lo, hi)) = ratio(1, 0) {
        let verdict = if m >= 0.97 { "met" } else { "missed" };
        println!(
            "b/a (kneo vs bare hyper-util): {m:.3}  (per-round {lo:.3} to {hi:.3}; target >= 0.97: {verdict})"
        );
    }
    if let Some((m, lo, hi)) = ratio(1, 2) {
        let verdict = if m > 1.0 { "met" } else { "missed" };
        println!(
            "b/c (kneo vs reqwest+retry):   {m:.3}  (per-round {lo:.3} to {hi:.3}; target > 1: {verdict})"
        );
    }
}

/// One pass of client `which`: 0 (a), 1 (b) or 2 (c).
async fn one_pass(
    which: usize,
    bare: &Bare,
    kneo: &Kneo,
    reqwest: &Reqwest,
    requests: usize,
    concurrency: usize,
) -> Pass {
    match which {
        0 => pass(bare, requests, concurrency).await,
        1 => pass(kneo, requests, concurrency).await,
        _ => pass(reqwest, requests, concurrency).await,
    }
}

/// The pass with the median throughput.
fn median(passes: &[Pass]) -> &Pass {
    let mut order: Vec<&Pass> = passes.iter().collect();
    order.sort_by(|x, y| x.rps.total_cmp(&y.rps));
    order[order.len() / 2]
}

fn main() {
    let settings = Settings::load();
    // `KNEO_BENCH_RUNTIME=current`: one thread, so instruction counts
    // (callgrind) do not depend on how work happened to be stolen.
    let mut builder = match std::env::var("KNEO_BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build().expect("a tokio runtime");
    runtime.block_on(run(&settings));
}
