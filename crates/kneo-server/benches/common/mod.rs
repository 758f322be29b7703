//! What kneo-server's benches share: the request every scenario sends, the
//! loopback server and client, the load loop and the table of results.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Concurrent connections, one worker each.
pub(crate) const CONCURRENCY: usize = 32;
/// How long a run loads before it measures.
pub(crate) const WARMUP: Duration = Duration::from_millis(200);
/// How long a run measures.
pub(crate) const MEASURE: Duration = Duration::from_millis(800);
/// Interleaved rounds of every scenario.
pub(crate) const ROUNDS: usize = 6;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keyed POST of a payment, with a caller's credential, to `url`.
pub(crate) fn payment(url: &str, key: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("idempotency-key", key)
        .header("authorization", "Bearer sk_bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"amount":1200,"currency":"eur"}"#,
        )))
        .expect("valid request")
}

/// The load loop's runtime: two worker threads.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client that keeps a connection per worker.
pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http()
}

/// Serves `app` on a loopback port: the URL of its `/pay`.
pub(crate) async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/pay")
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// A new key per request: every request is a first request.
    Fresh,
    /// One key per worker: after the first, every request is a replay.
    Replay,
}

pub(crate) struct Run {
    /// Requests in the measured window.
    pub(crate) requests: u64,
    /// Every request sent, warm-up included (read by the Postgres bench and
    /// the Redis scenarios).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) sent: u64,
    pub(crate) elapsed: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

impl Run {
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// [`CONCURRENCY`] workers sending keyed POSTs to `url` for [`WARMUP`] and
/// [`MEASURE`]; every answer must be `201 Created`.
pub(crate) async fn load(client: &HttpClient, url: &str, keys: Keys, label: &str) -> Run {
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
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) async fn load_once(client: &HttpClient, url: &str, label: &str) {
    for worker in 0..CONCURRENCY {
        let res = client
            .request(payment(url, format!("{label}-replay-{worker}")))
            .await
            .expect("answers");
        res.into_body().collect().await.expect("body");
    }
}

/// The table of `results` (by label, a run per round; a label's first two
/// characters only sort it): medians over the rounds, and "vs bare" the
/// median of each round's ratio to the `bare` scenario's run.
pub(crate) fn print_table(results: &BTreeMap<&str, Vec<Run>>, bare: &str) {
    println!("| scenario | req/s | vs bare | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    let bare_runs: Vec<f64> = results
        .get(bare)
        .map(|runs| runs.iter().map(Run::rps).collect())
        .unwrap_or_default();
    for (label, runs) in results {
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
}
