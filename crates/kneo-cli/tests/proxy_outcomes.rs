//! `kneo proxy --idempotency`: what the sidecar's own answers (502, 504)
//! leave under the caller's key, through the built binary: a request that
//! never reached the upstream frees its key, one whose attempt timed out is
//! recorded with the upstream's late answer, one cut off is recorded as
//! `upstream_outcome_unknown`. Never the gateway's answer as the upstream's.
//!
//! Timeouts around awaits are guards against a hang, not claims.

use kneo_tests::guarded;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use kneo_tests::proxy_client::{charge, connect, keyed_post, post_charge};
use kneo_tests::serve;
use kneo_tests::sidecar::Sidecar;
use kneo_tests::{Reply, ScriptedServer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 --idempotency STORE
/// ARGS`, once its startup line is out.
async fn sidecar(upstream: &str, store: &str, args: &[&str]) -> Sidecar {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let all = [&["--idempotency", store][..], args].concat();
    Sidecar::start(kneo, upstream, &all)
        .await
        .expect("kneo proxy starts")
}

/// A port with nothing listening on it (bound, then let go).
async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// An upstream on `addr` that counts its executions and answers 201.
async fn counting_upstream(addr: SocketAddr, runs: Arc<AtomicUsize>) {
    let listener = TcpListener::bind(addr)
        .await
        .expect("the port is free again");
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(r#"{{"charge":{n}}}"#);
        async move {
            let res = Response::builder()
                .status(201)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("valid");
            Ok::<_, Infallible>(res)
        }
    });
    serve(listener, service);
}

/// Defect: the sidecar's "could not connect" 502 was stored under the
/// caller's key and replayed for a day. Nothing was sent, so the key is free:
/// once the upstream is up, the same key runs.
#[tokio::test]
async fn a_502_for_an_upstream_that_was_down_frees_the_key() {
    let addr = free_port().await;
    let upstream = format!("http://{addr}");
    let proxy = sidecar(
        &upstream,
        "memory",
        &["--max-attempts", "2", "--timeout", "1"],
    )
    .await;
    let down = post_charge(proxy.addr(), "pay-1").await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert_eq!(down.json()["code"], "api_connection");

    let runs = Arc::new(AtomicUsize::new(0));
    counting_upstream(addr, runs.clone()).await;
    let up = post_charge(proxy.addr(), "pay-1").await;
    assert_eq!(up.status, StatusCode::CREATED, "{:?}", up.body);
    assert!(!up.replayed(), "the 502 was not stored");
    assert_eq!(up.json()["charge"], 1);
    let again = post_charge(proxy.addr(), "pay-1").await;
    assert!(again.replayed());
    assert_eq!(again.json()["charge"], 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Defect: a 504 was stored and replayed. Now the caller gets its 504 at
/// once, the upstream call goes on, a retry meanwhile is told 409, and the
/// upstream's real answer is what later retries get.
#[tokio::test]
async fn a_504_is_followed_by_the_upstream_s_late_answer() {
    // The upstream answers once the test lets it: after the 504 and the 409.
    let gate = Arc::new(Notify::new());
    let upstream = {
        let gate = gate.clone();
        ScriptedServer::with(move |_, _| {
            Reply::json(201, r#"{"charge":"late"}"#).gated(gate.clone())
        })
        .await
    };
    let url = upstream.url("");
    let proxy = sidecar(&url, "memory", &["--max-attempts", "1", "--timeout", "0.3"]).await;
    let first = post_charge(proxy.addr(), "pay-2").await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    let meanwhile = post_charge(proxy.addr(), "pay-2").await;
    assert_eq!(
        meanwhile.status,
        StatusCode::CONFLICT,
        "{:?}",
        meanwhile.body
    );
    assert_eq!(meanwhile.json()["code"], "idempotency_key_in_use");
    gate.notify_one();

    let mut answer = meanwhile;
    for _ in 0..100 {
        if answer.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = post_charge(proxy.addr(), "pay-2").await;
    }
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    assert!(answer.replayed());
    assert_eq!(answer.json()["charge"], "late");
    assert_eq!(upstream.count(), 1, "the upstream ran it once");
}

/// A request the upstream read and then hung up on may have been applied:
/// the key is kept, and a retry is told so (`upstream_outcome_unknown`,
/// `x-should-retry: false`), never given the 502 as the upstream's answer.
#[tokio::test]
async fn a_cut_connection_is_recorded_as_an_unknown_outcome() {
    let upstream = ScriptedServer::with(|_, _| Reply::close()).await;
    let proxy = sidecar(&upstream.url(""), "memory", &["--max-attempts", "1"]).await;
    let first = post_charge(proxy.addr(), "pay-3").await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY);
    let retry = post_charge(proxy.addr(), "pay-3").await;
    assert_eq!(retry.status, StatusCode::BAD_GATEWAY);
    assert!(retry.replayed());
    assert_eq!(retry.headers["x-should-retry"], "false");
    assert_eq!(retry.json()["code"], "upstream_outcome_unknown");
    assert_eq!(upstream.count(), 1, "never sent again");
}

/// An upstream whose body breaks off after its head (`Content-Length: 100`,
/// 10 bytes, close) did the work: with a key the caller still gets the head
/// and the 10 bytes (as without one), and a retry is told `410`, not run
/// again (it used to get 0 bytes, and every retry ran the upstream again).
#[tokio::test]
async fn a_body_cut_by_the_upstream_keeps_the_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let runs = Arc::new(AtomicUsize::new(0));
    {
        let runs = runs.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let runs = runs.clone();
                tokio::spawn(async move {
                    // The whole request: a head and a 13-byte body.
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.ends_with(br#"{"amount":10}"#) {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
    }
    let proxy = sidecar(
        &format!("http://{addr}"),
        "memory",
        &["--max-attempts", "1"],
    )
    .await;

    let (status, got, broke) = guarded("the cut response", async {
        let mut sender = connect(proxy.addr()).await;
        let req = charge("cut-1");
        // The cut can reach the caller before the proxy flushed the head
        // (hyper drops what it has not written when a body breaks): that is
        // a broken answer too.
        let Ok(res) = sender.send_request(req).await else {
            return (None, Vec::new(), true);
        };
        let status = Some(res.status());
        let mut body = res.into_body();
        let mut got = Vec::new();
        let mut broke = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Err(_) => {
                    broke = true;
                    break;
                }
            }
        }
        (status, got, broke)
    })
    .await;
    if let Some(status) = status {
        assert_eq!(status, StatusCode::OK);
        assert!(b"0123456789".starts_with(&got), "what arrived: {got:?}");
    }
    assert!(broke, "the caller sees the answer break off");

    let retry = post_charge(proxy.addr(), "cut-1").await;
    assert_eq!(retry.status, StatusCode::GONE, "{:?}", retry.body);
    assert_eq!(retry.json()["code"], "idempotency_response_not_stored");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not run again");
}

/// `--idempotency postgres://…`: the sidecar keeps its records in a
/// Postgres table (created when missing), for a fleet without Redis.
#[tokio::test]
async fn postgres_keeps_the_records_of_a_fleet() {
    let Some(pg) = kneo_tests::postgres::PostgresServer::start() else {
        return;
    };
    let addr = free_port().await;
    let runs = Arc::new(AtomicUsize::new(0));
    counting_upstream(addr, runs.clone()).await;
    let upstream = format!("http://{addr}");
    let store = pg.url();
    let a = sidecar(&upstream, &store, &["--max-attempts", "1"]).await;
    let b = sidecar(&upstream, &store, &["--max-attempts", "1"]).await;
    let first = post_charge(a.addr(), "pg-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = post_charge(b.addr(), "pg-1").await;
    assert!(replay.replayed(), "the other sidecar replays: one table");
    assert_eq!(replay.json()["charge"], 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `--max-idempotent-body` and `--max-stored-response` set the layer's two
/// limits (1 MiB each by default).
#[tokio::test]
async fn the_idempotency_limits_are_flags() {
    let addr = free_port().await;
    let runs = Arc::new(AtomicUsize::new(0));
    counting_upstream(addr, runs.clone()).await;
    let upstream = format!("http://{addr}");
    let small_body = sidecar(&upstream, "memory", &["--max-idempotent-body", "12"]).await;
    let refused = post_charge(small_body.addr(), "big-body").await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refused.json()["code"], "request_body_too_large");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "not forwarded");

    let small_store = sidecar(&upstream, "memory", &["--max-stored-response", "8"]).await;
    let first = post_charge(small_store.addr(), "big-answer").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json()["charge"], 1, "the first caller gets it whole");
    let retry = post_charge(small_store.addr(), "big-answer").await;
    assert_eq!(retry.status, StatusCode::GONE);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A keyed stream through `--idempotency memory` reaches the caller as the
/// upstream produces it (it used to arrive whole, at the end): the upstream
/// sends its second event only after the caller has read the first.
#[tokio::test]
async fn a_keyed_stream_reaches_the_caller_as_it_is_produced() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = {
        let gate = gate.clone();
        hyper::service::service_fn(move |_req: Request<Incoming>| {
            let gate = gate.clone();
            async move {
                let events = futures_util::stream::unfold(0, move |step| {
                    let gate = gate.clone();
                    async move {
                        let data = match step {
                            0 => "data: one\n\n",
                            1 => {
                                gate.notified().await;
                                "data: two\n\n"
                            }
                            _ => return None,
                        };
                        let frame = hyper::body::Frame::data(Bytes::from(data));
                        Some((Ok::<_, Infallible>(frame), step + 1))
                    }
                });
                let res = Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .body(http_body_util::StreamBody::new(events))
                    .expect("valid");
                Ok::<_, Infallible>(res)
            }
        })
    };
    serve(listener, service);
    let proxy = sidecar(&format!("http://{addr}"), "memory", &[]).await;
    guarded("the stream", async {
        let mut sender = connect(proxy.addr()).await;
        let req = keyed_post("/v1/chat/completions", "stream-1")
            .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
            .expect("valid");
        let res = sender.send_request(req).await.expect("the head");
        let mut body = res.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "data: one\n\n");
        // Only now may the upstream go on: the first event was not held back.
        gate.notify_one();
        let rest = body.collect().await.expect("the rest").to_bytes();
        assert_eq!(rest, "data: two\n\n");
    })
    .await;
    let replay = post_charge(proxy.addr(), "stream-1").await;
    let _ = replay;
}
