//! A caller that gives up must not make its request run twice, through the
//! real `kneo proxy --idempotency` (memory and Redis) in front of an
//! upstream that records its effects: the hang-up workload
//! (`kneo_tests::faults::run_hangup`, 300 requests per store; the seed is
//! printed and `HANGUP_SEED` replays it), and the defect as reported (`curl
//! -m 0.5 …`, then the same command without `-m`).

use kneo_tests::{guarded, GUARD};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kneo_tests::faults::caller::Point;
use kneo_tests::faults::{run_hangup, Charge, Effects, HangupOptions, SlowServer, Target};
use kneo_tests::sidecar::Sidecar;
use tokio::net::TcpStream;

async fn check(target: Target) {
    let seed = std::env::var("HANGUP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let options = HangupOptions::new(300, seed)
        .max_attempts(12)
        .kneo(env!("CARGO_BIN_EXE_kneo"));
    let Some(report) = run_hangup(target, &options).await else {
        return; // Redis without redis-server, outside CI.
    };
    println!("{report}");
    // The promise, strictly, for every store: no duplicate, no wrong body,
    // every caller answered (a hang-up during the Redis claim used to leave
    // its key held for the lease; see tests/FAULTS.md).
    let violations = report.violations();
    assert!(violations.is_empty(), "{violations:#?}\n{report}");
    for point in Point::ALL {
        assert!(report.abandoned_at(point) > 0, "{point:?}: {report}");
    }
    assert!(report.in_use > 0, "{report}");
    assert!(report.replays > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hanging_up_through_kneo_proxy_on_memory_never_run_a_request_twice() {
    check(Target::ProxyMemory).await;
}

/// Skipped when `redis-server` is not installed (a failure under `CI=true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hanging_up_through_kneo_proxy_on_redis_never_run_a_request_twice() {
    check(Target::ProxyRedis).await;
}

fn post(charge: &Charge, request_id: &str) -> Request<Full<Bytes>> {
    Request::post("/charges")
        .header("host", "kneo-proxy")
        .header("content-type", "application/json")
        .header("idempotency-key", "K")
        .header("x-request-id", request_id)
        .body(Full::new(charge.body()))
        .expect("a valid request")
}

/// The defect as reported: `curl -m 0.5 -X POST -d … -H 'Idempotency-Key:
/// K' $PX/charges` against an upstream that records its effect and then
/// takes a while (curl gives up and closes its connection: here once the
/// upstream has begun the run, however slow the machine), then the same
/// request without a time limit, from kneo's client (which sends a `409
/// idempotency_key_in_use` again after its `Retry-After`). The upstream ran
/// once; the answer is its 201, replayed; the request the caller gave up on
/// ran to its end and is in the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_times_out_through_kneo_proxy_and_retries_gets_the_replay_of_the_one_run() {
    let effects = Arc::new(Effects::default());
    let upstream = SlowServer::bare(effects.clone()).await;
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let upstream_url = format!("http://{}", upstream.addr());
    let proxy = Sidecar::start(kneo, &upstream_url, &["--idempotency", "memory"])
        .await
        .expect("kneo proxy starts");
    // The upstream answers 5 s after its effect: the hang-up below comes
    // long before, even on a stalled machine.
    let charge = Charge::new(1, 0, 5_000, 0);

    // curl -m: one connection, given up (and closed) while the upstream runs.
    let stream = TcpStream::connect(proxy.addr()).await.expect("connects");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let upstream_started = guarded("the upstream starts the run", async {
        while upstream.runs(1).started == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Whichever ends first, the request and its connection are dropped.
    tokio::select! {
        res = send.send_request(post(&charge, "hangup-first")) => {
            panic!("answered before the hang-up: {:?}", res.map(|r| r.status()))
        }
        res = conn => panic!("the connection ended before the answer: {res:?}"),
        () = upstream_started => {}
    }
    drop(send);

    // The same request, without -m, from kneo's client.
    let client = kneo::Client::builder()
        .base_url(proxy.url(""))
        .layer(
            kneo::ClientLayer::new()
                .retry(kneo_tests::fast_retry())
                .max_attempts(20)
                .deadline(GUARD),
        )
        .build()
        .expect("client builds");
    let res = guarded("the retry", client.request(post(&charge, "hangup-retry")))
        .await
        .expect("the retry succeeds");
    let status = res.status();
    let replayed = res.headers().get("idempotent-replayed").cloned();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();

    assert_eq!(
        effects.of_request(1),
        1,
        "the upstream ran {:?}",
        upstream.runs(1)
    );
    assert_eq!(upstream.runs(1).started, 1);
    assert_eq!(status, 201);
    assert_eq!(replayed.as_ref().map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(body, charge.expected(), "the one run's body, byte for byte");
    // The request the caller gave up on ran to its end, and is logged.
    let line = proxy.logged("hangup-first").await;
    assert_eq!(line["status"], 201, "{line}");
}
