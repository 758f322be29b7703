//! `kneo proxy --workers 2`: thread-per-core serving, through the built
//! binary. Connections spread over both workers (the kernel's
//! `SO_REUSEPORT`), and what an operator reads stays whole: `/metrics`
//! counts every worker's requests, SIGTERM lets every worker finish what
//! it has in flight, and the per-thread access-log buffers lose no line.
//!
//! Timeouts around awaits are guards against a hang, not claims.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kneo_tests::sidecar::Sidecar;
use kneo_tests::{guarded, Reply, ScriptedServer};
use tokio::net::TcpStream;

/// Caller connections opened per test: with two workers, the chance that
/// the kernel hands every one of them to the same worker is 2^-31.
const CONNECTIONS: usize = 32;

async fn sidecar(upstream: &str) -> Sidecar {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    Sidecar::start_with_admin(kneo, upstream, &["--workers", "2"])
        .await
        .expect("kneo proxy starts")
}

/// `requests` GETs of `path`, one after another on one new connection:
/// each answer's status and body.
async fn get_on_one_connection(
    addr: SocketAddr,
    path: &str,
    requests: usize,
) -> Vec<(StatusCode, Bytes)> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut answers = Vec::with_capacity(requests);
    for _ in 0..requests {
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let res = send.send_request(req).await.expect("an answer");
        let status = res.status();
        let body = res.into_body().collect().await.expect("a body").to_bytes();
        answers.push((status, body));
    }
    answers
}

/// The sum of every sample of `family` (`kneo_proxy_requests_total`, say),
/// and each sample's labels with its value.
fn samples(metrics: &str, family: &str) -> (u64, Vec<(String, u64)>) {
    let mut each = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if labels.is_empty() || labels.starts_with('{') {
            let value: f64 = value.parse().expect("a number");
            each.push((labels.to_owned(), value as u64));
        }
    }
    (each.iter().map(|(_, v)| v).sum(), each)
}

/// Both workers accepted connections: every worker is on the way.
fn assert_both_workers_served(metrics: &str, connections: usize) {
    let (total, per_worker) = samples(metrics, "kneo_proxy_connections_total");
    assert_eq!(total, connections as u64, "{per_worker:?}");
    for worker in ["0", "1"] {
        let label = format!("{{worker=\"{worker}\"}}");
        let accepted = per_worker
            .iter()
            .find(|(labels, _)| *labels == label)
            .map_or(0, |(_, n)| *n);
        assert!(
            accepted > 0,
            "worker {worker} accepted none: {per_worker:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_every_request_of_every_worker_once() {
    let upstream = ScriptedServer::start(vec![Reply::json(200, r#"{"ok":true}"#)]).await;
    let proxy = sidecar(&upstream.url("")).await;
    let per_connection = 5;

    let callers = (0..CONNECTIONS)
        .map(|_| tokio::spawn(get_on_one_connection(proxy.addr(), "/runs", per_connection)));
    let answers = guarded(
        "every caller answered",
        futures_util::future::join_all(callers),
    )
    .await;
    for answer in answers.into_iter().flat_map(|a| a.expect("the caller ran")) {
        assert_eq!(answer.0, StatusCode::OK);
    }

    let sent = (CONNECTIONS * per_connection) as u64;
    let metrics = proxy.metrics().await;
    let (answered, by_outcome) = samples(&metrics, "kneo_proxy_requests_total");
    assert_eq!(answered, sent, "{by_outcome:?}");
    let (attempts, _) = samples(&metrics, "kneo_proxy_upstream_attempts_total");
    assert_eq!(attempts, sent);
    assert_eq!(upstream.count() as u64, sent);
    // The admin connection is not the proxy's: callers' connections only.
    assert_both_workers_served(&metrics, CONNECTIONS);
}

#[tokio::test]
async fn sigterm_lets_every_worker_finish_its_requests_and_loses_no_log_line() {
    // Long enough that every request is still in flight at the SIGTERM.
    let slow = Duration::from_millis(600);
    let upstream =
        ScriptedServer::start(vec![Reply::json(200, r#"{"done":true}"#).delay(slow)]).await;
    let mut proxy = sidecar(&upstream.url("")).await;

    let callers: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(get_on_one_connection(proxy.addr(), "/slow", 1)))
        .collect();
    guarded("every request reaches the upstream", async {
        while upstream.count() < CONNECTIONS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_both_workers_served(&proxy.metrics().await, CONNECTIONS);
    proxy.terminate().expect("SIGTERM");

    for caller in callers {
        let answers = guarded("an answer after SIGTERM", caller)
            .await
            .expect("the caller ran");
        assert_eq!(answers[0].0, StatusCode::OK);
        assert_eq!(&answers[0].1[..], br#"{"done":true}"#);
    }
    let status = proxy
        .exited(Duration::from_secs(30))
        .await
        .expect("it exits");
    assert!(status.success(), "{status}");

    let log = proxy.access_log();
    let slow_lines = log
        .iter()
        .filter(|line| {
            let line: serde_json::Value = serde_json::from_str(line).expect("JSON");
            line["path"] == "/slow" && line["status"] == 200 && line["outcome"] == "upstream"
        })
        .count();
    assert_eq!(slow_lines, CONNECTIONS, "{log:#?}");
}
