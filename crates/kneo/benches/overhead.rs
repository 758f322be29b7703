//! In-process overhead of each kneo layer, and of the whole [`ClientLayer`],
//! over an in-memory `tower::service_fn` that answers `200` at once with an
//! empty body.
//!
//! Two figures per case, both shown against the bare service:
//!
//! - time per call, measured by criterion (poll_ready + call + poll to
//!   completion + dropping the response, request construction included);
//! - heap allocations per call, counted by a counting global allocator
//!   (`stats_alloc`) over 10,000 calls run outside criterion's timing loop.
//!
//! Every future here completes on its first poll (no retry, no timer), so
//! calls are driven with a no-op waker and no runtime: what is measured is
//! the layers, not a scheduler.
//!
//! Requests are a GET and a POST with no headers (the strictest baseline:
//! the first header a layer adds allocates the header map) and a GET with an
//! `Accept` header, as real API calls carry. The table also gives the size of
//! each response future, which every call moves around.
//!
//! Run: `cargo bench -p kneo --bench overhead`. Criterion's arguments work:
//! `-- client_layer` times only the full stack (allocations are counted for
//! every case regardless), `-- client_layer/POST --profile-time 5` runs one
//! case without analysis, for `perf record`.

use std::alloc::System;
use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::header::ACCEPT;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use kneo::idempotency::IdempotencyKeyLayer;
use kneo::map_error::MapErrorLayer;
use kneo::request_id::RequestIdLayer;
use kneo::retry::{ReplayBody, RetryLayer};
use kneo::throttle::ThrottleLayer;
use kneo::ClientLayer;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service, ServiceBuilder};
use tower_http::request_id::SetRequestIdLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Calls per allocation count.
const ALLOC_CALLS: u64 = 10_000;
/// Criterion samples per case (the last this many recorded are the measurement).
const SAMPLES: usize = 50;

type Body = Full<Bytes>;

/// The upstream: 200, empty body, at once. A fn item, so it is `Clone`
/// (the retry layer needs a `Clone` inner service) and generic over the body
/// (the retry layer wraps it in a [`ReplayBody`]).
async fn ok<B>(_req: Request<B>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Full::new(Bytes::new())))
}

/// A success that says how much quota is left (not exhausted).
async fn ok_limited<B>(_req: Request<B>) -> Result<Response<Body>, Infallible> {
    let mut res = Response::new(Full::new(Bytes::new()));
    let h = res.headers_mut();
    h.insert(
        "ratelimit-policy",
        HeaderValue::from_static(r#""minute";q=100;w=60"#),
    );
    h.insert(
        "ratelimit",
        HeaderValue::from_static(r#""minute";r=99;t=30"#),
    );
    Ok(res)
}

/// Parsed once: cloning it copies no bytes and allocates nothing.
static URI: LazyLock<Uri> = LazyLock::new(|| Uri::from_static("http://api.test/v1/runs/7"));

/// A request with no headers: the strictest baseline, since the first
/// header a layer adds allocates the header map.
fn request(method: Method) -> Request<Body> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = method;
    *req.uri_mut() = URI.clone();
    req
}

fn get() -> Request<Body> {
    request(Method::GET)
}

fn post() -> Request<Body> {
    request(Method::POST)
}

/// A GET with `Accept: application/json`, as real API calls carry: the
/// header map is already allocated before the layers see the request.
fn get_accept() -> Request<Body> {
    let mut req = request(Method::GET);
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    req
}

/// One call, driven to completion without a runtime.
fn call_once<S, B>(svc: &mut S, req: Request<B>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(ready) => ready.expect("invariant: the in-memory service is always ready"),
        Poll::Pending => panic!("invariant: the in-memory service is always ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(res) => res.expect("invariant: the upstream answers 200"),
        Poll::Pending => panic!("invariant: nothing in these stacks waits on a 200"),
    }
}

/// What one case measured.
struct Row {
    label: &'static str,
    /// The row this one is compared with.
    baseline: usize,
    /// Criterion's slope estimate, if the case was timed in this run.
    ns: Option<f64>,
    allocs: f64,
    reallocs: f64,
    bytes: f64,
    /// `size_of` the response future: what each call moves around.
    future: usize,
}

/// Times `svc` with criterion and counts its allocations.
fn measure<S, B>(
    c: &mut Criterion,
    rows: &mut Vec<Row>,
    (id, label, baseline): (&'static str, &'static str, usize),
    mut svc: S,
    make: fn() -> Request<B>,
) where
    S: Service<Request<B>>,
    S::Error: fmt::Debug,
{
    // The same samples criterion analyses, kept to print the summary table.
    let samples: Rc<RefCell<Vec<(u64, Duration)>>> = Rc::default();
    {
        let samples = samples.clone();
        let svc = &mut svc;
        c.bench_function(id, move |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(call_once(svc, make()));
                }
                let took = start.elapsed();
                samples.borrow_mut().push((iters, took));
                took
            })
        });
    }

    // Allocations, outside the timing loop: warm up (lazy statics, the
    // thread-local RNG), then count over ALLOC_CALLS calls.
    for _ in 0..100 {
        black_box(call_once(&mut svc, make()));
    }
    let region = Region::new(GLOBAL);
    for _ in 0..ALLOC_CALLS {
        black_box(call_once(&mut svc, make()));
    }
    let stats = region.change();
    let per_call = |n: usize| n as f64 / ALLOC_CALLS as f64;

    rows.push(Row {
        label,
        baseline,
        ns: slope_ns(&samples.borrow()),
        allocs: per_call(stats.allocations),
        reallocs: per_call(stats.reallocations),
        bytes: per_call(stats.bytes_allocated),
        future: std::mem::size_of::<S::Future>(),
    });
}

/// Criterion's point estimate (least squares through the origin of time on
/// iterations) over the measurement samples, which are the last `SAMPLES`
/// recorded (warm-up runs come first). `None` if criterion skipped the case.
fn slope_ns(samples: &[(u64, Duration)]) -> Option<f64> {
    if samples.len() < SAMPLES {
        return None;
    }
    let (xy, xx) =
        samples[samples.len() - SAMPLES..]
            .iter()
            .fold((0.0, 0.0), |(xy, xx), &(n, d)| {
                let x = n as f64;
                (xy + x * d.as_nanos() as f64, xx + x * x)
            });
    Some(xy / xx)
}

fn print_table(rows: &[Row]) {
    println!();
    println!("kneo overhead per call over an in-memory service_fn (200, empty body)");
    println!(
        "  ns: criterion slope estimate; allocs/reallocs/bytes: mean of {ALLOC_CALLS} calls under a counting allocator;"
    );
    println!(
        "  future: size in bytes of the response future; + columns: against the bare row with the same request"
    );
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "case", "ns/call", "+ns", "allocs", "+allocs", "reallocs", "bytes", "future"
    );
    for row in rows {
        let base = &rows[row.baseline];
        let (ns, dns) = match (row.ns, base.ns) {
            (Some(ns), Some(b)) => (format!("{ns:.1}"), format!("{:+.1}", ns - b)),
            (Some(ns), None) => (format!("{ns:.1}"), "-".to_owned()),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<44} {:>9} {:>9} {:>8.2} {:>+8.2} {:>8.2} {:>9.0} {:>8}",
            row.label,
            ns,
            dns,
            row.allocs,
            row.allocs - base.allocs,
            row.reallocs,
            row.bytes,
            row.future,
        );
    }
    println!();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(SAMPLES)
        .configure_from_args();
    let c = &mut c;
    let mut rows = Vec::new();
    let r = &mut rows;
    let bare = service_fn(ok::<Body>);
    // Under the retry layer the upstream sees a `ReplayBody`.
    let replayed = service_fn(ok::<ReplayBody<Body>>);

    // (criterion id, label, the row it is compared with). The baselines come
    // first: rows 0 (GET), 1 (POST) and 2 (GET with an Accept header).
    let case = ("bare/GET", "bare service_fn, GET", 0);
    measure(c, r, case, bare, get);
    let case = ("bare/POST", "bare service_fn, POST", 1);
    measure(c, r, case, bare, post);
    let case = ("bare/GET_accept", "bare service_fn, GET + Accept", 2);
    measure(c, r, case, bare, get_accept);

    let case = ("request_id/GET", "RequestIdLayer, GET", 0);
    measure(c, r, case, RequestIdLayer::new().layer(bare), get);

    let case = (
        "tower_http_request_id/GET",
        "tower-http SetRequestIdLayer, GET",
        0,
    );
    let svc = SetRequestIdLayer::x_request_id(tower_http::request_id::MakeRequestUuid).layer(bare);
    measure(c, r, case, svc, get);

    let case = ("idempotency_key/POST", "IdempotencyKeyLayer, POST", 1);
    measure(c, r, case, IdempotencyKeyLayer::new().layer(bare), post);

    let case = ("map_error/GET", "MapErrorLayer, GET", 0);
    measure(c, r, case, MapErrorLayer::new().layer(bare), get);

    // Row 6 is MapErrorLayer alone: the throttle's baseline.
    let case = ("throttle/GET", "ThrottleLayer over MapErrorLayer, GET", 6);
    measure(
        c,
        r,
        case,
        ThrottleLayer::new().layer(MapErrorLayer::new().layer(bare)),
        get,
    );
    let case = (
        "throttle_headers/GET",
        "ThrottleLayer, MapErrorLayer, rate-limit headers",
        6,
    );
    let limited = service_fn(ok_limited::<Body>);
    measure(
        c,
        r,
        case,
        ThrottleLayer::new().layer(MapErrorLayer::new().layer(limited)),
        get,
    );

    let case = (
        "retry_map_error/GET",
        "RetryLayer over MapErrorLayer, GET",
        0,
    );
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .layer(MapErrorLayer::new())
        .service(replayed);
    measure(c, r, case, svc, get);

    let stack = || ClientLayer::new().layer(replayed);
    let case = ("client_layer/GET", "ClientLayer (all five), GET", 0);
    measure(c, r, case, stack(), get);
    let case = ("client_layer/POST", "ClientLayer (all five), POST", 1);
    measure(c, r, case, stack(), post);
    let case = (
        "client_layer/GET_accept",
        "ClientLayer (all five), GET + Accept",
        2,
    );
    measure(c, r, case, stack(), get_accept);

    print_table(&rows);
}
