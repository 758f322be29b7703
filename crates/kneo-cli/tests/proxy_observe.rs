//! Black-box tests of `kneo proxy --idempotency`: every answer, whoever made
//! it (the upstream, a replay, the idempotency layer), is logged and counted
//! once, with this request's id; the upstream's own id is logged beside it.
//!
//! Timing is only ever asserted from below; the timeouts around awaits are
//! guards against a hang, not claims.

use kneo_tests::guarded;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kneo_tests::redis::RedisServer;
use kneo_tests::{Reply, ScriptedServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Notify};

/// A running `kneo proxy`, its access log read line by line.
struct Sidecar {
    _child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Sidecar {
    /// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 --admin 127.0.0.1:0
    /// --idempotency STORE`, once its startup line is out.
    async fn start(upstream: &str, store: &str) -> Sidecar {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kneo"))
            .args(["proxy", "--upstream", upstream])
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--idempotency", store])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kneo proxy");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = guarded("the startup line", lines.recv())
            .await
            .expect("kneo proxy printed its startup line");
        let startup: Value = serde_json::from_str(&first).expect("the startup line is JSON");
        let addr = |v: &Value| v.as_str().expect("an address").parse().expect("IP:PORT");
        Sidecar {
            _child: child,
            listen: addr(&startup["listening"]),
            admin: addr(&startup["admin"]),
            lines,
        }
    }

    /// The next access-log line.
    async fn log(&mut self) -> Value {
        let line = guarded("an access-log line", self.lines.recv())
            .await
            .expect("kneo proxy is still printing");
        serde_json::from_str(&line).expect("access-log lines are JSON")
    }

    /// A `kneo_proxy_requests_total` series from `/metrics` (0 when absent).
    async fn requests_total(&self, outcome: &str, class: &str) -> f64 {
        let metrics = send(
            Request::get(format!("http://{}/metrics", self.admin))
                .body(Full::default())
                .expect("valid"),
        )
        .await;
        assert_eq!(metrics.status, StatusCode::OK);
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let series =
            format!("kneo_proxy_requests_total{{outcome=\"{outcome}\",class=\"{class}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    /// A keyed POST of `body` to `/charges`, with `id` as its `X-Request-ID`
    /// when given.
    fn post(&self, key: &str, body: &'static str, id: Option<&str>) -> Request<Full<Bytes>> {
        let mut req =
            Request::post(format!("http://{}/charges", self.listen)).header("idempotency-key", key);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("valid")
    }
}

/// What the caller got.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

async fn send(req: Request<Full<Bytes>>) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let res = guarded("the response", client.request(req))
        .await
        .expect("the proxy answers");
    let (parts, body) = res.into_parts();
    let body = guarded("the body", body.collect())
        .await
        .expect("the whole body")
        .to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A log line's field as a string.
fn field<'v>(log: &'v Value, name: &str) -> Option<&'v str> {
    log[name].as_str()
}

/// An answer the idempotency layer made: a problem with `code`, carrying
/// this request's id (the header, the `request_id` member, the log line's)
/// and `Via`; logged as `idempotency` with no attempts.
fn assert_layer_problem(got: &Got, log: &Value, status: u16, code: &str) {
    assert_eq!(got.status.as_u16(), status);
    let problem = got.json();
    assert_eq!(problem["code"], code, "{problem}");
    let id = got.header("x-request-id").expect("an x-request-id");
    assert_eq!(problem["request_id"], id, "{problem}");
    assert_eq!(got.header("via"), Some("1.1 kneo"));
    assert_eq!(log["outcome"], "idempotency", "{log}");
    assert_eq!(log["status"], status, "{log}");
    assert_eq!(log["attempts"], 0, "{log}");
    assert_eq!(field(log, "request_id"), Some(id), "{log}");
    assert!(log.get("upstream_request_id").is_none(), "{log}");
}

// A replay is logged and counted as such, and answers with the retry's own
// id; the first request's id is under `Original-Request`.
#[tokio::test]
async fn a_replay_is_logged_and_counted_with_this_requests_id() {
    let server = ScriptedServer::start(vec![Reply::json(201, r#"{"charge":1}"#)]).await;
    let mut proxy = Sidecar::start(&server.url(""), "memory").await;

    let first = send(proxy.post("charge-1", "{\"amount\":5}", Some("first-1"))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("x-request-id"), Some("first-1"));
    let log = proxy.log().await;
    assert_eq!(log["outcome"], "upstream", "{log}");
    assert_eq!(log["request_id"], "first-1");
    assert_eq!(log["attempts"], 1);
    assert!(
        log.get("upstream_request_id").is_none(),
        "an echo of ours is not the upstream's own id: {log}"
    );

    let retry = send(proxy.post("charge-1", "{\"amount\":5}", Some("retry-2"))).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body, "byte for byte");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("x-request-id"), Some("retry-2"));
    assert_eq!(retry.header("original-request"), Some("first-1"));
    assert_eq!(retry.header("via"), Some("1.1 kneo"), "one entry, not two");
    let log = proxy.log().await;
    assert_eq!(log["outcome"], "replayed", "{log}");
    assert_eq!(log["request_id"], "retry-2");
    assert_eq!(log["status"], 201);
    assert_eq!(log["attempts"], 0);
    assert_eq!(log["path"], "/charges");
    assert_eq!(log["method"], "POST");
    assert!(log.get("upstream_request_id").is_none(), "{log}");

    // A retry without an id of its own gets one made, the same in its
    // answer and its log line (not the first request's).
    let bare = send(proxy.post("charge-1", "{\"amount\":5}", None)).await;
    let made = bare.header("x-request-id").expect("an id was made");
    assert_ne!(made, "first-1");
    assert_eq!(bare.header("original-request"), Some("first-1"));
    let log = proxy.log().await;
    assert_eq!(log["outcome"], "replayed", "{log}");
    assert_eq!(field(&log, "request_id"), Some(made));

    assert_eq!(server.count(), 1, "the upstream ran it once");
    assert_eq!(proxy.requests_total("upstream", "2xx").await, 1.0);
    assert_eq!(proxy.requests_total("replayed", "2xx").await, 2.0);
}

// The same key with another body is the layer's 422: logged, counted, with
// this request's id and Via. So is an invalid key's 400.
#[tokio::test]
async fn the_layers_own_problems_are_logged_and_counted() {
    let server = ScriptedServer::start(vec![Reply::json(201, "{}")]).await;
    let mut proxy = Sidecar::start(&server.url(""), "memory").await;
    send(proxy.post("charge-2", "{\"amount\":5}", Some("first-1"))).await;
    assert_eq!(proxy.log().await["outcome"], "upstream");

    let other = send(proxy.post("charge-2", "{\"amount\":6}", Some("other-3"))).await;
    assert_eq!(other.header("x-request-id"), Some("other-3"));
    assert_layer_problem(&other, &proxy.log().await, 422, "idempotency_key_mismatch");

    // No id from the caller: the one made is in the answer and the log.
    let bare = send(proxy.post("charge-2", "{\"amount\":7}", None)).await;
    assert_layer_problem(&bare, &proxy.log().await, 422, "idempotency_key_mismatch");

    let invalid = send(proxy.post("", "{}", Some("bad-key-4"))).await;
    assert_eq!(invalid.header("x-request-id"), Some("bad-key-4"));
    assert_layer_problem(&invalid, &proxy.log().await, 400, "idempotency_key_invalid");

    assert_eq!(server.count(), 1);
    assert_eq!(proxy.requests_total("idempotency", "4xx").await, 3.0);
    assert_eq!(proxy.requests_total("upstream", "2xx").await, 1.0);
}

// A retry while the first still runs is the layer's 409, logged before the
// first's own line.
#[tokio::test]
async fn a_409_while_the_first_runs_is_logged() {
    // The upstream holds the first until the 409 is logged.
    let gate = Arc::new(Notify::new());
    let server = ScriptedServer::start(vec![Reply::json(201, "{}").gated(gate.clone())]).await;
    let mut proxy = Sidecar::start(&server.url(""), "memory").await;
    let first = tokio::spawn(send(proxy.post("charge-3", "{}", Some("slow-1"))));
    guarded("the first request upstream", async {
        while server.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let busy = send(proxy.post("charge-3", "{}", Some("busy-2"))).await;
    assert_eq!(busy.header("x-request-id"), Some("busy-2"));
    assert!(busy.header("retry-after").is_some());
    assert_layer_problem(&busy, &proxy.log().await, 409, "idempotency_key_in_use");
    gate.notify_one();

    let first = first.await.expect("the first request");
    assert_eq!(first.status, StatusCode::CREATED);
    let log = proxy.log().await;
    assert_eq!(log["outcome"], "upstream", "{log}");
    assert_eq!(log["request_id"], "slow-1");
    assert_eq!(proxy.requests_total("idempotency", "4xx").await, 1.0);
}

// The upstream's own X-Request-ID reaches the caller unchanged, and the log
// has both ids; a replay of that answer keeps it, and logs it again.
#[tokio::test]
async fn the_upstreams_own_request_id_is_logged_beside_ours() {
    let server = ScriptedServer::start(vec![
        Reply::json(201, "{}").header("x-request-id", "req_upstream1")
    ])
    .await;
    let mut proxy = Sidecar::start(&server.url(""), "memory").await;

    let get = Request::get(format!("http://{}/runs/7", proxy.listen))
        .header("x-request-id", "mine-1")
        .body(Full::default())
        .expect("valid");
    let got = send(get).await;
    assert_eq!(got.header("x-request-id"), Some("req_upstream1"));
    assert_eq!(
        server.requests()[0].header("x-request-id").as_deref(),
        Some("mine-1"),
        "the upstream got ours"
    );
    let log = proxy.log().await;
    assert_eq!(log["outcome"], "upstream", "{log}");
    assert_eq!(log["request_id"], "mine-1");
    assert_eq!(log["upstream_request_id"], "req_upstream1");

    send(proxy.post("charge-4", "{}", Some("first-2"))).await;
    let log = proxy.log().await;
    assert_eq!(log["request_id"], "first-2");
    assert_eq!(log["upstream_request_id"], "req_upstream1");
    let replay = send(proxy.post("charge-4", "{}", Some("retry-3"))).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        replay.header("x-request-id"),
        Some("req_upstream1"),
        "an id the upstream set is part of its answer"
    );
    assert_eq!(replay.header("original-request"), None);
    let log = proxy.log().await;
    assert_eq!(log["outcome"], "replayed", "{log}");
    assert_eq!(log["request_id"], "retry-3");
    assert_eq!(log["upstream_request_id"], "req_upstream1");
    assert_eq!(server.count(), 2);
}

// The store-unavailable 503 is the layer's answer too: logged and counted
// as a 5xx, the request never sent.
#[tokio::test]
async fn a_store_outage_503_is_logged_and_counted() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = ScriptedServer::start(vec![Reply::json(201, "{}")]).await;
    let mut proxy = Sidecar::start(&server.url(""), &redis.url()).await;
    redis.stop();

    let got = send(proxy.post("charge-5", "{}", Some("outage-1"))).await;
    assert_eq!(got.header("x-request-id"), Some("outage-1"));
    assert_layer_problem(
        &got,
        &proxy.log().await,
        503,
        "idempotency_store_unavailable",
    );
    assert_eq!(server.count(), 0);
    assert_eq!(proxy.requests_total("idempotency", "5xx").await, 1.0);
}
