//! Bound 1: an 8 MiB error body costs the client at most the body cap plus a
//! constant, measured with a counting global allocator.
//!
//! A loopback hyper server answers with an 8 MiB error body (a `500` of text,
//! and a `400` `application/problem+json`), declared in `Content-Length` and
//! sent as `Bytes::from_static` chunks, so the server allocates next to
//! nothing per byte. The request goes through kneo's whole `ClientLayer`
//! (one attempt, so one body is read) over the hyper-util client, on a
//! current-thread runtime. The figure is the allocator's peak while the
//! request is sent and its error mapped, above what the same request costs
//! when the server answers a tiny error body (the baseline: connection,
//! buffers, request id, the `Error` itself).
//!
//! The allocator is `peak_alloc`'s (current and peak bytes in two atomics,
//! `reset_peak_usage`); the workspace forbids `unsafe`, which an allocator of
//! our own would need. The tests share one process-wide counter, so they run
//! one at a time, each on a runtime of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kneo::core::DEFAULT_BODY_CAP;
use kneo::retry::ReplayBody;
use kneo::{ClientLayer, Error, ErrorKind};
use peak_alloc::PeakAlloc;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The tests of this binary measure one process-wide counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What the server sends for a big body.
const BIG: usize = 8 * 1024 * 1024;

/// What the client may hold beyond the cap while it reads an error body, at
/// the default cap:
///
/// - the bytes the kept text is made from: the capped reader's buffer (at
///   most the cap: it never grows past it) is alive while the `Error` copies
///   it into its text, so one more cap, 64 KiB, until the mapping ends;
/// - hyper's connection read buffer, which grows by doubling from 8 KiB
///   while the socket fills it, until the client stops at the cap: about
///   100 KiB measured, at most a few reads' worth (hyper's own ceiling,
///   `max_buf_size`, is ~400 KiB);
/// - small change: the frames between the socket and the cap, the message.
///
/// 256 KiB covers them with room to spare; the figures printed show how much.
/// (Before the capped reader stopped doubling and the message stopped
/// copying the whole body, twice, the same request cost cap + 373 KiB.)
const SLACK: usize = 256 * 1024;

/// A static block the big bodies are cut from: the server copies nothing.
static PAD: [u8; 64 * 1024] = [b'x'; 64 * 1024];

const PROBLEM_HEAD: &[u8] =
    br#"{"type":"https://example.invalid/problems/huge","title":"Huge","status":400,"detail":""#;
const PROBLEM_TAIL: &[u8] = br#""}"#;

type ServerBody = BoxBody<Bytes, Infallible>;

/// `head`, then `PAD` up to `total - head - tail` bytes, then `tail`: static
/// slices, produced lazily.
fn static_body(head: &'static [u8], total: usize, tail: &'static [u8]) -> ServerBody {
    let pad = total - head.len() - tail.len();
    let pads = (0..pad.div_ceil(PAD.len())).map(move |i| {
        let len = PAD.len().min(pad - i * PAD.len());
        Bytes::from_static(&PAD[..len])
    });
    let chunks = std::iter::once(Bytes::from_static(head))
        .chain(pads)
        .chain(std::iter::once(Bytes::from_static(tail)))
        .filter(|b| !b.is_empty())
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

/// `/500/big`, `/500/tiny`, `/400/big`, `/400/tiny`.
fn answer(req: &Request<Incoming>) -> Response<ServerBody> {
    let (status, content_type, body, len) = match req.uri().path() {
        "/500/big" => (500, "text/plain", static_body(b"", BIG, b""), BIG),
        "/400/big" => (
            400,
            "application/problem+json",
            static_body(PROBLEM_HEAD, BIG, PROBLEM_TAIL),
            BIG,
        ),
        "/400/tiny" => {
            let tiny: &'static [u8] = br#"{"type":"about:blank","title":"Tiny","status":400}"#;
            let body = static_body(tiny, tiny.len(), b"");
            (400, "application/problem+json", body, tiny.len())
        }
        _ => (500, "text/plain", static_body(b"tiny", 4, b""), 4),
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(status).expect("test status");
    let headers = res.headers_mut();
    headers.insert("content-type", http::HeaderValue::from_static(content_type));
    headers.insert("content-length", http::HeaderValue::from(len));
    res
}

/// A loopback HTTP/1 server answering by path.
async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(&req))
                });
                // The client hangs up after the cap: the write error is expected.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One GET through a fresh stack (so each measurement opens its own
/// connection): the bytes allocated at the peak above those allocated
/// before the request was sent, and the error.
async fn measure(addr: SocketAddr, path: &str) -> (usize, Error) {
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Full<Bytes>>>(HttpConnector::new());
    let svc = ClientLayer::new()
        .retry(kneo_tests::fast_retry().max_attempts(1))
        .layer(transport);
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .expect("valid request");
    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let err = svc.oneshot(req).await.expect_err("an error status");
    let peak = ALLOC.peak_usage();
    (peak.saturating_sub(before), err)
}

/// Runs `case` alone in this process, on a current-thread runtime.
fn alone(case: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(case);
}

/// The big body's peak above the tiny one's, printed and checked against
/// the bound; returns the big body's error.
async fn above_baseline(status: u16) -> Error {
    let addr = server().await;
    // Warm-up: whatever is allocated once per process (lazy statics, the
    // runtime's first timer) is not the body's.
    let _ = measure(addr, &format!("/{status}/tiny")).await;
    let (baseline, tiny) = measure(addr, &format!("/{status}/tiny")).await;
    assert!(!tiny.body_truncated(), "the baseline body is whole");
    let (big, err) = measure(addr, &format!("/{status}/big")).await;
    let above = big.saturating_sub(baseline);
    println!(
        "bounds_alloc {status}: body {BIG} B, cap {DEFAULT_BODY_CAP} B; peak {big} B, \
         baseline {baseline} B, above baseline {above} B = cap + {} B (bound: cap + {SLACK} B)",
        above as i64 - DEFAULT_BODY_CAP as i64
    );
    assert!(
        above <= DEFAULT_BODY_CAP + SLACK,
        "{status}: {above} B above baseline, over the cap ({DEFAULT_BODY_CAP}) + {SLACK}"
    );
    assert!(
        above < BIG / 8,
        "{status}: {above} B above baseline: the 8 MiB body was buffered"
    );
    assert!(
        above >= DEFAULT_BODY_CAP,
        "{status}: {above} B above baseline, less than the cap that the error keeps: \
         the measurement missed the body"
    );
    assert_eq!(err.status(), StatusCode::from_u16(status).ok());
    assert_eq!(err.attempts(), 1, "one attempt, one body read");
    assert!(
        err.body_truncated(),
        "the error says its body was cut short"
    );
    let text = err
        .body()
        .as_text()
        .expect("a truncated body is kept as text");
    assert_eq!(text.len(), DEFAULT_BODY_CAP, "exactly the cap is kept");
    err
}

#[test]
fn an_8_mib_500_costs_at_most_the_cap_plus_a_constant() {
    alone(async {
        let err = above_baseline(500).await;
        assert_eq!(err.kind(), ErrorKind::Server);
        let text = err.body().as_text().expect("text");
        assert!(text.bytes().all(|b| b == b'x'));
    });
}

#[test]
fn an_8_mib_problem_json_400_costs_at_most_the_cap_plus_a_constant() {
    alone(async {
        let err = above_baseline(400).await;
        assert_eq!(err.kind(), ErrorKind::Status);
        let text = err.body().as_text().expect("text");
        assert!(text.starts_with(std::str::from_utf8(PROBLEM_HEAD).expect("ASCII")));
        assert!(
            err.problem().is_none(),
            "a truncated problem body is never parsed"
        );
        assert!(
            err.message().len() <= 1024,
            "the message is bounded: {} bytes",
            err.message().len()
        );
    });
}
