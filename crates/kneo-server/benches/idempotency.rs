//! Keyed POSTs through `IdempotencyLayer` against the same handler without
//! it, on loopback, side by side: bare, `MemoryStore`, `RedisStore` (a real
//! `redis-server` started here, when it is on `PATH`), first requests and
//! replays; and the Redis commands per request from `INFO commandstats`.
//!
//! ```text
//! cargo bench -p kneo-server --features redis --bench idempotency
//! ```
//!
//! Bounded: 6 interleaved rounds of 5 scenarios × 1 s (about 30 s), 127.0.0.1
//! only. Each round runs every scenario once, so drift (other work on the
//! machine) hits all of them alike; the table shows medians over the rounds,
//! and "vs bare" is the median of the per-round ratios.
//! A load loop rather than criterion: the quantity is a server's throughput
//! under concurrent load, not one call's latency.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use common::{client, load, payment, print_table, runtime, serve, HttpClient, Keys, Run};
use common::{CONCURRENCY, MEASURE, ROUNDS};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kneo_server::{IdempotencyLayer, MemoryStore};

async fn handler(body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let out = format!(
        r#"{{"id":"pay_1","amount_len":{},"status":"succeeded"}}"#,
        body.len()
    );
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(out)))
        .expect("valid response"))
}

fn routes() -> Router {
    Router::new().route("/pay", post(handler))
}

#[cfg(feature = "redis")]
mod redis_server {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub(crate) struct RedisServer {
        pub(crate) port: u16,
        child: Child,
    }

    impl RedisServer {
        pub(crate) fn start() -> Option<Self> {
            let port = TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let server = RedisServer { port, child };
            let started = Instant::now();
            while server.command("PING").as_deref() != Some("PONG") {
                if started.elapsed() > Duration::from_secs(10) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(server)
        }

        pub(crate) fn command(&self, cmd: &str) -> Option<String> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
            stream.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if let Some(len) = line.strip_prefix('$') {
                let mut buf = vec![0; len.parse::<usize>().ok()? + 2];
                reader.read_exact(&mut buf).ok()?;
                return String::from_utf8(buf).ok();
            }
            Some(line.trim_start_matches(['+', ':']).to_owned())
        }

        pub(crate) fn calls(&self) -> BTreeMap<String, u64> {
            let info = self.command("INFO commandstats").unwrap_or_default();
            info.lines()
                .filter_map(|line| {
                    let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                    let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?;
                    Some((name.to_owned(), calls.parse().ok()?))
                })
                .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat"))
                .collect()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(feature = "redis")]
fn per_request(calls: &BTreeMap<String, u64>, requests: u64) -> String {
    calls
        .iter()
        .map(|(name, n)| format!("{name} {:.2}", *n as f64 / requests.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `KNEO_BENCH_SCENARIO=bare|memory KNEO_BENCH_REQUESTS=N`: exactly `N`
/// first requests against that one server, from 16 callers, on a
/// one-thread runtime, then exit: what `benches/instructions.sh` counts
/// under callgrind (a fixed amount of work, where the load loop runs for a
/// fixed time).
fn counted(scenario: &str, requests: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let app = match scenario {
            "bare" => routes(),
            "memory" => routes().layer(IdempotencyLayer::new(MemoryStore::new())),
            other => panic!("KNEO_BENCH_SCENARIO is bare or memory, not {other:?}"),
        };
        let url = serve(app).await;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        const CALLERS: u64 = 16;
        let tasks: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    for n in (caller..requests).step_by(CALLERS as usize) {
                        let req = payment(&url, format!("counted-{n}"));
                        let res = client.request(req).await.expect("loopback server answers");
                        assert_eq!(res.status(), StatusCode::CREATED);
                        res.into_body().collect().await.expect("body");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("caller");
        }
    });
    println!("requests: {requests}");
}

fn main() {
    if let Ok(scenario) = std::env::var("KNEO_BENCH_SCENARIO") {
        let requests = std::env::var("KNEO_BENCH_REQUESTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2_000);
        return counted(&scenario, requests);
    }
    runtime().block_on(async {
        let client = client();
        let bare = serve(routes()).await;
        let memory = serve(routes().layer(IdempotencyLayer::new(MemoryStore::new()))).await;

        #[cfg(feature = "redis")]
        let redis = match redis_server::RedisServer::start() {
            Some(server) => {
                let url = format!("redis://127.0.0.1:{}/", server.port);
                let store = kneo_server::RedisStore::connect(url).await.expect("redis connects");
                let app = serve(routes().layer(IdempotencyLayer::new(store))).await;
                Some((server, app))
            }
            None => {
                println!("redis-server not on PATH: Redis scenarios skipped");
                None
            }
        };
        #[cfg(not(feature = "redis"))]
        println!("built without the `redis` feature: Redis scenarios skipped");

        let mut results: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
        #[cfg(feature = "redis")]
        let mut redis_counts: Vec<(&str, BTreeMap<String, u64>, u64)> = Vec::new();
        for round in 0..ROUNDS {
            results.entry("1 bare handler").or_default().push(load(&client, &bare, Keys::Fresh, &format!("bare{round}")).await);
            results.entry("2 memory, first requests").or_default().push(load(&client, &memory, Keys::Fresh, &format!("mem{round}")).await);
            results.entry("3 memory, replays").or_default().push(load(&client, &memory, Keys::Replay, &format!("memr{round}")).await);
            #[cfg(feature = "redis")]
            if let Some((server, url)) = &redis {
                for (label, keys, name) in [
                    ("4 redis, first requests", Keys::Fresh, format!("red{round}")),
                    ("5 redis, replays", Keys::Replay, format!("redr{round}")),
                ] {
                    if keys == Keys::Replay {
                        // Make the replays' records first, outside the count.
                        common::load_once(&client, url, &name).await;
                    }
                    server.command("CONFIG RESETSTAT");
                    let run = load(&client, url, keys, &name).await;
                    redis_counts.push((label, server.calls(), run.sent));
                    results.entry(label).or_default().push(run);
                }
            }
        }

        println!(
            "\nkeyed POSTs, {CONCURRENCY} concurrent connections, loopback, median of {ROUNDS} rounds x {:.1} s\n",
            MEASURE.as_secs_f64()
        );
        print_table(&results, "1 bare handler");
        #[cfg(feature = "redis")]
        if !redis_counts.is_empty() {
            println!("\nRedis commands per request (INFO commandstats; GET and one SET per first request run inside the EVALSHA script):\n");
            let mut merged: BTreeMap<&str, (BTreeMap<String, u64>, u64)> = BTreeMap::new();
            for (label, calls, total) in &redis_counts {
                let entry = merged.entry(label).or_default();
                for (name, n) in calls {
                    *entry.0.entry(name.clone()).or_default() += n;
                }
                entry.1 += total;
            }
            for (label, (calls, total)) in &merged {
                println!(
                    "- {}: {} requests; per request: {}",
                    &label[2..],
                    total,
                    per_request(calls, *total),
                );
            }
        }
    });
}
