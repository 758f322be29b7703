//! Retry storms: what kneo's retry layer does to an upstream that is failing.
//!
//! A hyper server on `127.0.0.1:0` counts every request it receives and
//! answers `503` (with a small JSON error body) to all of them, or to a
//! seeded-random 30% of them. Callers send GETs through [`ClientLayer`] over
//! hyper-util's client, with a 1 ms backoff base (`Backoff::new().base(1ms)`)
//! so the waits do not dominate the run.
//!
//! 1. Total outage, 2,000 logical requests from 32 callers: amplification =
//!    requests the upstream received / logical requests, with the default
//!    policy (3 attempts) and with a retry budget,
//!    `TpsBudget::new(10 s, 1/s, 0.1)`: retries may add 10% to the traffic,
//!    plus a reserve of 1 retry per second of the 10 s window (10 retries).
//! 2. 30% of requests fail with `503`, independently, drawn from a seeded
//!    generator: the success rate callers see with the default 3 attempts,
//!    over 10,000 logical requests. Sent one at a time, so the server draws
//!    its answers in the same order on every run and the figures repeat
//!    exactly. Shown for comparison: 4 attempts, and 3 attempts under the
//!    budget above.
//!
//! Run: `cargo bench -p kneo --bench storm` (`KNEO_BENCH_SEED` changes the
//! seed, default 7; arguments are ignored). Bounded: a fixed number of
//! requests, each within a 10 s deadline.

#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kneo::retry::{Backoff, ReplayBody, RetryLayer, TpsBudget};
use kneo::ClientLayer;
use tower::{Layer, Service, ServiceExt};

const OUTAGE_REQUESTS: usize = 2_000;
const OUTAGE_CALLERS: usize = 32;
const FLAKY_REQUESTS: usize = 10_000;
const FAILURE_RATE: f64 = 0.3;
const BUDGET_RATIO: f32 = 0.1;

/// How the upstream answers.
enum Mode {
    /// 503 to everything.
    Outage,
    /// 503 to a random share of requests.
    Flaky {
        rate: f64,
        rng: Mutex<fastrand::Rng>,
    },
}

struct Upstream {
    mode: Mode,
    received: AtomicU64,
}

impl Upstream {
    fn status(&self) -> StatusCode {
        self.received.fetch_add(1, Ordering::Relaxed);
        let fail = match &self.mode {
            Mode::Outage => true,
            Mode::Flaky { rate, rng } => {
                let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                rng.f64() < *rate
            }
        };
        if fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
}

/// Starts a counting upstream; returns its address.
async fn start(upstream: Arc<Upstream>) -> SocketAddr {
    support::serve(move |_req: Request<Incoming>| {
        let status = upstream.status();
        async move {
            let body: &'static [u8] = if status.is_success() {
                br#"{"id":7,"status":"succeeded"}"#
            } else {
                br#"{"error":{"code":"unavailable","message":"try again later"}}"#
            };
            let res = Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(body)))
                .expect("invariant: a static response is valid");
            Ok::<_, Infallible>(res)
        }
    })
    .await
}

/// What one scenario measured.
struct Outcome {
    logical: usize,
    received: u64,
    ok: usize,
    elapsed: Duration,
}

impl Outcome {
    fn amplification(&self) -> f64 {
        self.received as f64 / self.logical as f64
    }

    fn success(&self) -> f64 {
        self.ok as f64 / self.logical as f64
    }
}

/// Sends `logical` GETs from `callers` concurrent callers through `layer`
/// to a fresh upstream in `mode`.
async fn scenario(layer: ClientLayer, mode: Mode, logical: usize, callers: usize) -> Outcome {
    let upstream = Arc::new(Upstream {
        mode,
        received: AtomicU64::new(0),
    });
    let addr = start(upstream.clone()).await;
    let uri: Uri = format!("http://{addr}/v1/runs/7")
        .parse()
        .expect("invariant: a socket address makes a valid URI");
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let transport: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(http);
    let service = layer.deadline(Duration::from_secs(10)).layer(transport);

    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut service = service.clone();
            let next = next.clone();
            let uri = uri.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                while next.fetch_add(1, Ordering::Relaxed) < logical {
                    let req = Request::get(uri.clone())
                        .body(Full::default())
                        .expect("invariant: a GET with a valid URI is a valid request");
                    let Ok(svc) = service.ready().await else {
                        continue;
                    };
                    if let Ok(res) = svc.call(req).await {
                        if res.into_body().collect().await.is_ok() {
                            ok += 1;
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.expect("invariant: a caller task does not panic");
    }
    Outcome {
        logical,
        received: upstream.received.load(Ordering::Relaxed),
        ok,
        elapsed: start.elapsed(),
    }
}

fn budget() -> TpsBudget {
    TpsBudget::new(Duration::from_secs(10), 1, BUDGET_RATIO)
}

fn flaky(seed: u64) -> Mode {
    Mode::Flaky {
        rate: FAILURE_RATE,
        rng: Mutex::new(fastrand::Rng::with_seed(seed)),
    }
}

fn report(label: &str, o: &Outcome) {
    println!(
        "  {label:<40} logical {:>6}  upstream got {:>6}  amplification {:.3}  success {:>6.2}%  ({:.1} s)",
        o.logical,
        o.received,
        o.amplification(),
        o.success() * 100.0,
        o.elapsed.as_secs_f64(),
    );
}

async fn run(seed: u64) {
    let backoff = || Backoff::new().base(Duration::from_millis(1)).seed(seed);
    let retry = || RetryLayer::new().backoff(backoff());
    let layer = || ClientLayer::new().retry(retry());

    println!("kneo retry storms (backoff base 1 ms, seed {seed})");
    println!();
    println!(
        "1. total outage (every request 503): {OUTAGE_REQUESTS} logical requests, {OUTAGE_CALLERS} callers"
    );
    let unbounded = scenario(
        ClientLayer::new().retry(retry().no_budget()),
        Mode::Outage,
        OUTAGE_REQUESTS,
        OUTAGE_CALLERS,
    )
    .await;
    report("3 attempts, no budget", &unbounded);
    let default = scenario(layer(), Mode::Outage, OUTAGE_REQUESTS, OUTAGE_CALLERS).await;
    report("default: 3 attempts + RetryQuota (500, 5 a 503)", &default);
    let quota_bound = 1.0 + 100.0 / OUTAGE_REQUESTS as f64;
    println!(
        "  default quota: {:.3}; its bound 1 + (500 / 5) / {OUTAGE_REQUESTS} = {quota_bound:.3}",
        default.amplification()
    );
    let budgeted = scenario(
        ClientLayer::new().retry(retry().no_budget().budget(budget())),
        Mode::Outage,
        OUTAGE_REQUESTS,
        OUTAGE_CALLERS,
    )
    .await;
    report("3 attempts + TpsBudget(10s, 1/s, 0.1)", &budgeted);
    let reserve = 10.0 / OUTAGE_REQUESTS as f64;
    let bound = 1.0 + f64::from(BUDGET_RATIO) + reserve;
    let target = 1.0 + f64::from(BUDGET_RATIO) + 0.05;
    println!(
        "  with budget: {:.3}; budget's own bound 1 + {BUDGET_RATIO} + reserve {reserve:.3} = {bound:.3}; target <= {target:.2}: {}",
        budgeted.amplification(),
        if budgeted.amplification() <= target { "met" } else { "missed" }
    );

    println!();
    println!(
        "2. {:.0}% of requests fail with 503 at random (seeded): {FLAKY_REQUESTS} logical requests, one at a time",
        FAILURE_RATE * 100.0
    );
    let three = scenario(layer(), flaky(seed), FLAKY_REQUESTS, 1).await;
    report("default: 3 attempts + RetryQuota", &three);
    let unbounded = scenario(
        ClientLayer::new().retry(retry().no_budget()),
        flaky(seed),
        FLAKY_REQUESTS,
        1,
    )
    .await;
    report("3 attempts, no budget", &unbounded);
    let four = scenario(layer().max_attempts(4), flaky(seed), FLAKY_REQUESTS, 1).await;
    report("4 attempts (for comparison)", &four);
    let tight = scenario(
        ClientLayer::new().retry(retry().no_budget().budget(budget())),
        flaky(seed),
        FLAKY_REQUESTS,
        1,
    )
    .await;
    report("3 attempts + TpsBudget(10s, 1/s, 0.1)", &tight);
    let expect = |n: i32| (1.0 - FAILURE_RATE.powi(n)) * 100.0;
    let sd = (FAILURE_RATE.powi(3) * (1.0 - FAILURE_RATE.powi(3)) / FLAKY_REQUESTS as f64).sqrt();
    println!(
        "  independent failures: expected success {:.2}% with 3 attempts (sd {:.2} points over {FLAKY_REQUESTS}), {:.2}% with 4",
        expect(3),
        sd * 100.0,
        expect(4)
    );
    println!(
        "  default 3 attempts: {:.2}%; target >= 99%: {}",
        three.success() * 100.0,
        if three.success() >= 0.99 {
            "met"
        } else {
            "missed"
        }
    );
}

fn main() {
    let seed = std::env::var("KNEO_BENCH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(seed));
}
