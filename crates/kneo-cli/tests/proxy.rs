//! Black-box tests of `kneo proxy`: the built binary between a plain hyper
//! client (the caller) and a scripted loopback upstream.
//!
//! Timing is only ever asserted from below; the timeouts around awaits are
//! guards against a hang, not claims.

use kneo_tests::{guarded, GUARD};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use kneo_tests::proxy_client::{caller, send, send_with};
use kneo_tests::sidecar::{self, Sidecar};
use kneo_tests::{Reply, ScriptedServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 --admin 127.0.0.1:0
/// ARGS`, once its startup line is out: that line has exactly the addresses
/// and the upstream.
async fn sidecar(upstream: &str, args: &[&str]) -> Sidecar {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let proxy = Sidecar::start_with_admin(kneo, upstream, args)
        .await
        .expect("kneo proxy starts");
    let startup = proxy.startup();
    let object = startup.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["admin", "listening", "upstream"], "{startup}");
    assert_eq!(startup["upstream"], upstream.trim_end_matches('/'));
    assert!(proxy.admin().is_some(), "{startup}");
    proxy
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).expect("valid")
}

/// A loopback upstream answering every request with `handler`.
async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

// 1. Forwarding: method, path, query, prefix; hop-by-hop headers both ways;
// X-Forwarded-*, Via, Host.
#[tokio::test]
async fn forwards_method_path_and_query_and_rewrites_headers() {
    let server = ScriptedServer::start(vec![Reply::status(201)
        .header("connection", "x-up-secret")
        .header("x-up-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic")
        .header("x-kept", "yes")
        .body("made")])
    .await;
    let mut proxy = sidecar(&server.url("/api/v1/"), &[]).await;
    let req = Request::put(proxy.url("/runs/7?x=1&key=secret-value"))
        .header("host", "caller.example")
        .header("connection", "X-Secret")
        .header("x-secret", "hush")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "https")
        .header("via", "1.0 fred")
        .header("authorization", "Bearer end-to-end")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("valid");
    let got = send(req).await;

    assert_eq!(got.status, StatusCode::CREATED);
    assert_eq!(&got.body[..], b"made");
    assert_eq!(got.header("x-kept"), Some("yes"));
    for gone in ["x-up-secret", "keep-alive", "proxy-authenticate"] {
        assert!(got.header(gone).is_none(), "{gone} reached the caller");
    }
    assert_eq!(got.header("via"), Some("1.1 kneo"));

    let seen = &server.requests()[0];
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.uri, "/api/v1/runs/7?x=1&key=secret-value");
    assert_eq!(&seen.body[..], b"payload");
    assert_eq!(seen.header("host"), Some(server.addr().to_string()));
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "connection",
    ] {
        assert!(seen.header(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(seen.header("te").as_deref(), Some("trailers"));
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer end-to-end")
    );
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("10.1.2.3, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("caller.example")
    );
    assert_eq!(seen.header("via").as_deref(), Some("1.0 fred, 1.1 kneo"));

    // The access log: one line, the path without its query.
    let log = proxy.next_log().await;
    assert_eq!(log["method"], "PUT");
    assert_eq!(log["path"], "/runs/7");
    assert_eq!(log["status"], 201);
    assert_eq!(log["attempts"], 1);
    assert_eq!(log["outcome"], "upstream");
    assert!(
        log["upstream_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{log}"
    );
    assert_eq!(
        log["request_id"].as_str(),
        seen.header("x-request-id").as_deref()
    );
    assert!(!log.to_string().contains("secret-value"), "{log}");
}

// 2. Request ids and idempotency keys: the caller's kept, else stamped; the
// id comes back.
/// The caller's address reaches the upstream whichever way a request goes:
/// straight to the stack, or through the idempotency layer in front.
#[tokio::test]
async fn the_callers_address_is_forwarded_with_or_without_a_front() {
    for args in [&[][..], &["--idempotency", "memory"][..]] {
        let server = ScriptedServer::start(vec![Reply::status(201), Reply::status(200)]).await;
        let proxy = sidecar(&server.url(""), args).await;
        let post = Request::post(proxy.url("/pay"))
            .header("idempotency-key", "order-1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid");
        assert_eq!(send(post).await.status, StatusCode::CREATED, "{args:?}");
        let get = Request::get(proxy.url("/runs"))
            .body(Full::new(Bytes::new()))
            .expect("valid");
        assert_eq!(send(get).await.status, StatusCode::OK, "{args:?}");
        let seen = server.requests();
        assert_eq!(seen.len(), 2, "{args:?}");
        for seen in &seen {
            assert_eq!(
                seen.header("x-forwarded-for").as_deref(),
                Some("127.0.0.1"),
                "{args:?} {}",
                seen.uri
            );
        }
    }
}

#[tokio::test]
async fn caller_ids_and_keys_are_kept_and_missing_ones_stamped() {
    let server = ScriptedServer::with(|n, _| match n {
        // The upstream echoes an id of its own: that one is passed through.
        2 => Reply::status(200).header("x-request-id", "upstream-echo"),
        _ => Reply::status(200),
    })
    .await;
    let proxy = sidecar(&server.url(""), &[]).await;

    let kept = Request::post(proxy.url("/charges"))
        .header("x-request-id", "order-7")
        .header("idempotency-key", "charge-41")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid");
    let got = send(kept).await;
    assert_eq!(got.header("x-request-id"), Some("order-7"));

    let stamped = Request::post(proxy.url("/charges"))
        .header("x-request-id", "has spaces is malformed")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid");
    let got_stamped = send(stamped).await;

    let echoed = send(get(proxy.url("/runs"))).await;
    assert_eq!(echoed.header("x-request-id"), Some("upstream-echo"));

    let seen = server.requests();
    assert_eq!(seen[0].header("x-request-id").as_deref(), Some("order-7"));
    assert_eq!(
        seen[0].header("idempotency-key").as_deref(),
        Some("charge-41")
    );
    let id = seen[1].header("x-request-id").expect("an id was stamped");
    assert_ne!(id, "has spaces is malformed");
    assert_eq!(got_stamped.header("x-request-id"), Some(id.as_str()));
    let key = seen[1]
        .header("idempotency-key")
        .expect("a key was stamped");
    assert_eq!(key.len(), 36, "a UUID: {key}");
    assert!(
        seen[2].header("idempotency-key").is_none(),
        "GET needs no key"
    );
}

// 3. Upstream answers pass through unchanged, 4xx included.
#[tokio::test]
async fn upstream_404_passes_through_byte_for_byte() {
    let body = Bytes::from_static(b"{\"error\":{\"code\":\"run_missing\"}}\n\xff raw bytes");
    let server = ScriptedServer::start(vec![Reply::status(404)
        .header("content-type", "application/json")
        .header("x-error-code", "run_missing")
        .body(body.clone())])
    .await;
    let mut proxy = sidecar(&server.url(""), &[]).await;
    let got = send(get(proxy.url("/runs/7"))).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.body, body);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-error-code"), Some("run_missing"));
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(server.count(), 1, "a 404 is never retried");
    assert_eq!(proxy.next_log().await["status"], 404);
}

// 3. Retries: 503 then 200; the caller sees 200, the upstream one key.
#[tokio::test]
async fn a_503_then_200_is_a_200_and_both_attempts_carry_one_key() {
    let server =
        ScriptedServer::start(vec![Reply::status(503), Reply::status(200).body("done")]).await;
    let mut proxy = sidecar(&server.url(""), &[]).await;
    let post = Request::post(proxy.url("/charges"))
        .body(Full::new(Bytes::from_static(b"{\"amount\":5}")))
        .expect("valid");
    let got = send(post).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"done");
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let key = seen[0].header("idempotency-key").expect("stamped");
    assert_eq!(seen[1].header("idempotency-key"), Some(key));
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
    assert_eq!(
        &seen[1].body[..],
        b"{\"amount\":5}",
        "the body was replayed"
    );
    let log = proxy.next_log().await;
    assert_eq!(log["attempts"], 2);
    assert_eq!(log["status"], 200);
}

// 3. When retrying stops on a response, that response is the answer.
#[tokio::test]
async fn a_429_asking_too_long_a_wait_is_passed_through_at_once() {
    let server = ScriptedServer::start(vec![Reply::status(429)
        .header("retry-after", "120")
        .body("slow down")])
    .await;
    let proxy = sidecar(&server.url(""), &["--max-retry-after", "1"]).await;
    let got = send(get(proxy.url("/runs"))).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("120"));
    assert_eq!(&got.body[..], b"slow down");
    assert_eq!(server.count(), 1);
}

// 3. A POST without a key that may have been applied is not re-sent; with a
// key it is.
#[tokio::test]
async fn a_reset_post_without_a_key_is_not_resent() {
    let server = ScriptedServer::start(vec![Reply::close(), Reply::status(200)]).await;
    let mut proxy = sidecar(&server.url(""), &["--no-idempotency-key"]).await;
    let post = || {
        Request::post(proxy.url("/charges"))
            .body(Full::new(Bytes::from_static(b"{\"amount\":5}")))
            .expect("valid")
    };
    let got = send(post()).await;
    let p = got.problem(502, "api_connection");
    assert_eq!(p["attempts"], 1);
    assert_eq!(p["kind"], "network");
    assert_eq!(
        server.count(),
        1,
        "the upstream read it once and never again"
    );
    assert!(
        server.requests()[0].header("idempotency-key").is_none(),
        "--no-idempotency-key stamps none"
    );
    assert_eq!(proxy.next_log().await["outcome"], "unreachable");

    // The same hang-up on a keyed POST is retried.
    let server = ScriptedServer::start(vec![Reply::close(), Reply::status(200)]).await;
    let proxy = sidecar(&server.url(""), &[]).await;
    let got = send(post_to(&proxy, "/charges")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(server.count(), 2);
}

fn post_to(proxy: &Sidecar, path: &str) -> Request<Full<Bytes>> {
    Request::post(proxy.url(path))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid")
}

// 3. No upstream at all: a 502 problem with code and request id.
#[tokio::test]
async fn connect_refused_is_a_502_problem() {
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let mut proxy = sidecar(&url, &[]).await;
    let req = Request::get(proxy.url("/runs"))
        .header("x-request-id", "order-9")
        .body(Full::default())
        .expect("valid");
    let got = send(req).await;
    let p = got.problem(502, "api_connection");
    assert_eq!(p["request_id"], "order-9");
    assert_eq!(p["kind"], "network");
    assert_eq!(p["attempts"], 3, "a refused connect is always retried: {p}");
    assert_eq!(p["type"], "urn:kneo:problem:upstream-unreachable");
    let log = proxy.next_log().await;
    assert_eq!(log["status"], 502);
    assert_eq!(log["outcome"], "unreachable");
    assert_eq!(log["request_id"], "order-9");
    // Never seen: not ready.
    assert_eq!(
        proxy.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK);
}

// 3. The per-attempt timeout: a 504 problem.
#[tokio::test]
async fn a_slow_upstream_is_a_504_problem() {
    let server =
        ScriptedServer::start(vec![Reply::status(200).delay(Duration::from_secs(5))]).await;
    let proxy = sidecar(
        &server.url(""),
        &["--timeout", "0.3", "--max-attempts", "1"],
    )
    .await;
    let start = Instant::now();
    let got = send(get(proxy.url("/slow"))).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    let p = got.problem(504, "api_timeout");
    assert_eq!(p["type"], "urn:kneo:problem:upstream-timeout");
    assert_eq!(p["attempts"], 1);
}

// 4. A 5 MiB response streams: the first bytes reach the caller while the
// upstream is still holding the rest back.
#[tokio::test]
async fn a_large_response_is_streamed() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 5 * 1024 * 1024;
    let gate = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let addr = {
        let gate = gate.clone();
        let finished = finished.clone();
        upstream(move |_req| {
            let gate = gate.clone();
            let finished = finished.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
                tokio::spawn(async move {
                    let pattern = |at: usize| -> Bytes {
                        (at..at + CHUNK).map(|i| (i % 251) as u8).collect()
                    };
                    let _ = tx.send(Ok(Frame::data(pattern(0)))).await;
                    gate.notified().await;
                    for at in (CHUNK..TOTAL).step_by(CHUNK) {
                        if tx.send(Ok(Frame::data(pattern(at)))).await.is_err() {
                            return;
                        }
                    }
                    finished.store(1, Ordering::SeqCst);
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|frame| (frame, rx))
                });
                Response::new(StreamBody::new(stream).boxed())
            }
        })
        .await
    };
    let proxy = sidecar(&format!("http://{addr}"), &[]).await;
    let res = guarded(
        "the response head",
        caller().request(get(proxy.url("/big"))),
    )
    .await
    .expect("answered");
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut received = Vec::with_capacity(TOTAL);
    while received.is_empty() {
        let frame = guarded("the first bytes", body.frame())
            .await
            .expect("a frame")
            .expect("ok");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the upstream is still holding back"
    );
    gate.notify_one();
    while let Some(frame) = guarded("the rest", body.frame()).await {
        if let Ok(data) = frame.expect("ok").into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(received.len(), TOTAL);
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "byte for byte"
    );
}

// 4. A request body over the replay cap is streamed once and not retried;
// under the cap it is replayed.
#[tokio::test]
async fn a_200_kib_post_is_streamed_once() {
    let server = ScriptedServer::start(vec![Reply::status(503)]).await;
    let proxy = sidecar(&server.url(""), &[]).await;
    let big: Bytes = (0..200 * 1024).map(|i| (i % 241) as u8).collect();
    let post = |body: Bytes| {
        Request::post(proxy.url("/upload"))
            .body(Full::new(body))
            .expect("valid")
    };
    let got = send(post(big.clone())).await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream's 503, passed on"
    );
    assert_eq!(server.count(), 1, "never re-sent");
    assert_eq!(server.requests()[0].body, big, "sent whole");

    let small = Bytes::from(vec![7u8; 1024]);
    let got = send(post(small.clone())).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.count(), 1 + 3, "a small body is replayed");
    assert!(server.requests()[1..].iter().all(|r| r.body == small));
}

// 3. The budget caps amplification under a total outage.
#[tokio::test]
async fn the_retry_budget_caps_amplification_in_an_outage() {
    const REQUESTS: usize = 300;
    let server = ScriptedServer::start(vec![Reply::status(503)]).await;
    let proxy = sidecar(
        &server.url(""),
        &["--max-attempts", "3", "--budget-percent", "20"],
    )
    .await;
    let client = caller();
    let url = proxy.url("/outage");
    let statuses = futures_util::future::join_all((0..30).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..REQUESTS / 30 {
                statuses.push(send_with(&client, get(url.clone())).await.status);
            }
            statuses
        }
    }))
    .await;
    assert!(statuses
        .iter()
        .flatten()
        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE));
    // Without a budget: 3 × 300 = 900. With it: the 10/s floor over the
    // 10 s window (100) plus 20 % of 300.
    let sent = server.count();
    assert!(sent >= REQUESTS, "{sent}");
    assert!(
        sent <= REQUESTS + 100 + REQUESTS / 5 + 5,
        "{sent} upstream requests for {REQUESTS}"
    );
    assert!(proxy.metric("kneo_proxy_budget_refusals_total").await > 0.0);
}

// 5. A slow or idle caller cannot hold the proxy.
#[tokio::test]
async fn slow_callers_big_heads_and_extra_connections_are_bounded() {
    let server = ScriptedServer::start(vec![Reply::status(200)]).await;
    // The header timeout is the subject here only; it also ends an idle
    // keep-alive connection, so the later phases run on a sidecar whose
    // timeout no slow machine reaches.
    let cut = sidecar(&server.url(""), &["--header-timeout", "0.5"]).await;
    let proxy = sidecar(
        &server.url(""),
        &["--header-timeout", "60", "--max-connections", "1"],
    )
    .await;

    // A head that never ends is cut off after the header timeout.
    let start = Instant::now();
    let mut slow = TcpStream::connect(cut.addr()).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = guarded("the cut-off", slow.read_to_end(&mut rest)).await;
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{rest:?}"
    );
    drop(slow);
    drop(cut);

    // A 100 KiB head is refused.
    let mut big = connect_when_free(&proxy).await;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = guarded("the 431", big.read_to_end(&mut answer)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(big);
    assert_eq!(server.count(), 0, "neither reached the upstream");

    // One connection held open: the next caller gets a 503 problem.
    let mut held = connect_when_free(&proxy).await;
    held.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = guarded("the held answer", held.read(&mut buf))
        .await
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let got = send(get(proxy.url("/extra"))).await;
    let p = got.problem(503, "too_many_connections");
    assert_eq!(p["attempts"], 0);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(server.count(), 1, "the extra request never went upstream");
    assert!(proxy.metric("kneo_proxy_overload_connections_total").await >= 1.0);
    assert_eq!(
        proxy
            .metric("kneo_proxy_requests_total{outcome=\"overloaded\",class=\"5xx\"}")
            .await,
        1.0
    );
}

/// A connection to the proxy once it serves again (its one slot freed).
async fn connect_when_free(proxy: &Sidecar) -> TcpStream {
    guarded("a free slot", async {
        loop {
            if proxy.metric("kneo_proxy_open_connections").await == 0.0 {
                return TcpStream::connect(proxy.addr()).await.expect("connect");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

// 6. SIGTERM with a request in flight: it completes, then exit 0.
#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let gate = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    let addr = {
        let gate = gate.clone();
        upstream(move |req| {
            let gate = gate.clone();
            let arrived = arrived_tx.clone();
            async move {
                if req.uri().path() == "/slow" {
                    let _ = arrived.send(());
                    gate.notified().await;
                }
                Response::new(full("finished"))
            }
        })
        .await
    };
    let mut proxy = sidecar(&format!("http://{addr}"), &[]).await;
    let in_flight = tokio::spawn(send(get(proxy.url("/slow"))));
    guarded("the request upstream", arrived.recv())
        .await
        .expect("arrived");

    proxy.terminate().expect("SIGTERM sent");
    guarded("draining", async {
        while proxy.admin_get("/readyz").await
            != (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    guarded("the listener closed", async {
        while TcpStream::connect(proxy.addr()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(proxy.try_wait().is_none(), "still draining");

    gate.notify_one();
    let got = in_flight.await.expect("the caller task");
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"finished");
    let status = proxy.exited(GUARD).await.expect("exited");
    assert_eq!(status.code(), Some(0));
    assert_eq!(proxy.next_log().await["path"], "/slow");
}

// Admin: /metrics counts what happened, /readyz follows the upstream.
#[tokio::test]
async fn metrics_count_what_the_proxy_did() {
    let server = ScriptedServer::with(|n, _| match n {
        0 => Reply::status(200),
        1 => Reply::status(404),
        _ => Reply::status(503),
    })
    .await;
    let proxy = sidecar(&server.url(""), &[]).await;
    guarded("ready", async {
        while proxy.admin_get("/readyz").await.0 != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(send(get(proxy.url("/a"))).await.status, StatusCode::OK);
    assert_eq!(
        send(get(proxy.url("/b"))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(get(proxy.url("/c"))).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let m = |s: &'static str| proxy.metric(s);
    assert_eq!(
        m("kneo_proxy_requests_total{outcome=\"upstream\",class=\"2xx\"}").await,
        1.0
    );
    assert_eq!(
        m("kneo_proxy_requests_total{outcome=\"upstream\",class=\"4xx\"}").await,
        1.0
    );
    assert_eq!(
        m("kneo_proxy_requests_total{outcome=\"upstream\",class=\"5xx\"}").await,
        1.0
    );
    assert_eq!(m("kneo_proxy_upstream_attempts_total").await, 5.0);
    assert_eq!(m("kneo_proxy_retries_total").await, 2.0);
    assert_eq!(m("kneo_proxy_budget_refusals_total").await, 0.0);
    assert_eq!(m("kneo_proxy_in_flight").await, 0.0);
    assert_eq!(m("kneo_proxy_request_duration_seconds_count").await, 3.0);
    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("# TYPE kneo_proxy_request_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(proxy.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(proxy.admin_get("/nope").await.0, StatusCode::NOT_FOUND);
}

// The command line: bad flags and unusable upstreams exit 2, quoting no secret.
#[tokio::test]
async fn bad_flags_exit_2_without_echoing_secrets() {
    let cases: &[&[&str]] = &[
        &[],
        &["--upstream", "not a url"],
        &["--upstream", "ftp://127.0.0.1:1/"],
        &["--upstream", "http://user:hunter2@127.0.0.1:1/"],
        &["--upstream", "http://127.0.0.1:1/?key=hunter2"],
        &["--upstream", "http://127.0.0.1:1", "--max-attempts", "0"],
        &["--upstream", "http://127.0.0.1:1", "--budget-percent", "-5"],
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--budget-percent",
            "2000",
        ],
        &["--upstream", "http://127.0.0.1:1", "--timeout", "0"],
        &["--upstream", "http://127.0.0.1:1", "--max-connections", "0"],
        &["--upstream", "http://127.0.0.1:1", "--listen", "hunter2"],
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--admin",
            "localhost:hunter2",
        ],
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--idempotency",
            "hunter2",
        ],
        // A Redis that cannot be reached: its URL (and password) never printed.
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--idempotency",
            "redis://:hunter2@127.0.0.1:1",
        ],
        &["--upstream", "http://127.0.0.1:1", "--bogus=hunter2"],
    ];
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    for args in cases {
        let command = sidecar::command(kneo, args);
        sidecar::assert_refused(command, &format!("{args:?}"), "hunter2").await;
    }
}

// Startup: the admin listener is optional and reported as null.
#[tokio::test]
async fn without_admin_the_startup_line_says_null() {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let mut proxy = Sidecar::start(kneo, "http://127.0.0.1:1", &[])
        .await
        .expect("kneo proxy starts");
    let startup = proxy.startup();
    assert_eq!(startup["admin"], Value::Null);
    assert_eq!(startup["upstream"], "http://127.0.0.1:1");
    assert!(startup["listening"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    proxy.signal("INT").expect("SIGINT sent");
    let status = proxy.exited(GUARD).await.expect("exited");
    assert_eq!(status.code(), Some(0), "SIGINT drains and exits 0 too");
}

// 7. `--idempotency memory`: an upstream that knows nothing of keys gets
// replay protection from its sidecar.
#[tokio::test]
async fn idempotency_memory_replays_a_retried_post_and_runs_it_once() {
    let server = ScriptedServer::start(vec![Reply::json(201, r#"{"charge":1}"#)]).await;
    let proxy = sidecar(&server.url(""), &["--idempotency", "memory"]).await;
    let post = || {
        Request::post(proxy.url("/charges"))
            .header("idempotency-key", "charge-77")
            .body(Full::new(Bytes::from_static(b"{\"amount\":5}")))
            .expect("valid")
    };
    let first = send(post()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = send(post()).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body, "byte for byte");
    assert_eq!(server.count(), 1, "the upstream ran it once");

    // The same key with another body is a 422 problem, and never reaches the upstream.
    let other = Request::post(proxy.url("/charges"))
        .header("idempotency-key", "charge-77")
        .body(Full::new(Bytes::from_static(b"{\"amount\":6}")))
        .expect("valid");
    let got = send(other).await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(got.json()["code"], "idempotency_key_mismatch");
    assert_eq!(server.count(), 1);
}

// A rate limit the upstream announced is honoured by the sidecar for every
// process behind it: a reset beyond --max-retry-after is a local 429.
#[tokio::test]
async fn an_announced_rate_limit_is_a_local_429_for_every_caller() {
    let server = ScriptedServer::start(vec![Reply::json(200, "{}")
        .header("ratelimit-policy", r#""hour";q=100;w=3600"#)
        .header("ratelimit", r#""hour";r=0;t=600"#)])
    .await;
    let proxy = sidecar(&server.url(""), &["--max-retry-after", "5"]).await;
    let first = send(get(proxy.url("/runs"))).await;
    assert_eq!(first.status, StatusCode::OK);
    let got = send(get(proxy.url("/runs"))).await;
    let p = got.problem(429, "rate_limited_locally");
    assert_eq!(p["kind"], "rate_limited");
    let wait: u64 = got
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(wait >= 590, "{wait}");
    assert_eq!(server.count(), 1, "not sent upstream");
}
