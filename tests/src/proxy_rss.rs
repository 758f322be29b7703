//! Bound 3: the `kneo proxy` process's resident memory while a large
//! response streams through it, read from `/proc/<pid>/status` (Linux).
//!
//! [`run`] starts a loopback hyper upstream that answers `GET` with
//! [`Options::bytes`] bytes (`Content-Length` declared, sent as static 64 KiB
//! chunks), spawns the real `kneo proxy` binary in front of it, and GETs the
//! body through the proxy with a hyper client that counts the bytes and
//! drops them. A thread samples the proxy's `VmRSS` meanwhile; `VmHWM` (the
//! kernel's own peak) is read once the body is in, and [`Report::peak_kib`]
//! is the larger of the two. Used by the soak binary
//! `proxy_rss` and by kneo-cli's `tests/proxy_rss.rs`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use kneo_tests::proxy_rss::{run, Options};
//!
//! let report = run(&Options::new("target/debug/kneo", 128 << 20)).await?;
//! assert_eq!(report.bytes, 128 << 20);
//! assert!(report.peak_kib() < 64 * 1024);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::sidecar::Sidecar;

/// The upstream's chunk size.
pub const CHUNK: usize = 64 * 1024;

/// The block every chunk is cut from: the upstream copies nothing.
static PAD: [u8; CHUNK] = [b'k'; CHUNK];

/// What to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The `kneo` executable.
    pub kneo: PathBuf,
    /// The response size.
    pub bytes: u64,
    /// How often `VmRSS` is sampled.
    pub sample_every: Duration,
}

impl Options {
    /// `bytes` through the `kneo` at `kneo`, `VmRSS` sampled every 10 ms.
    pub fn new(kneo: impl Into<PathBuf>, bytes: u64) -> Self {
        Options {
            kneo: kneo.into(),
            bytes,
            sample_every: Duration::from_millis(10),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// Body bytes the client received.
    pub bytes: u64,
    /// Body bytes the upstream sent.
    pub expected: u64,
    /// From sending the request to the body's end.
    pub elapsed: Duration,
    /// The proxy's `VmRSS` (KiB) once it was listening, before the request.
    pub idle_rss_kib: u64,
    /// The largest `VmRSS` (KiB) sampled during the transfer.
    pub max_rss_kib: u64,
    /// The proxy's `VmHWM` (KiB, the kernel's peak RSS) after the transfer.
    pub vm_hwm_kib: u64,
    /// How many `VmRSS` samples were taken.
    pub samples: u64,
}

impl Report {
    /// The peak RSS in KiB: `VmHWM`, or a sampled `VmRSS` if one was higher
    /// (the kernel updates its high-water mark lazily, so a sample taken
    /// between two updates can exceed it by a few pages).
    pub fn peak_kib(&self) -> u64 {
        self.vm_hwm_kib.max(self.max_rss_kib)
    }

    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "proxy_rss: {} of {} bytes in {:.2} s ({:.0} MiB/s); proxy VmHWM {:.1} MiB, \
             max sampled VmRSS {:.1} MiB ({} samples), idle VmRSS {:.1} MiB",
            self.bytes,
            self.expected,
            self.elapsed.as_secs_f64(),
            self.mib_per_s(),
            mib(self.vm_hwm_kib),
            mib(self.max_rss_kib),
            self.samples,
            mib(self.idle_rss_kib),
        )
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

/// `total` bytes as static chunks of at most [`CHUNK`], produced lazily.
fn body_of(total: u64) -> UpBody {
    let chunk = CHUNK as u64;
    let chunks = (0..total.div_ceil(chunk)).map(move |i| {
        let len = chunk.min(total - i * chunk) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&PAD[..len])))
    });
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

/// A loopback HTTP/1 upstream answering every request with `bytes` bytes.
/// It stops accepting when the returned handle is aborted or dropped with
/// the runtime.
pub async fn upstream(bytes: u64) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    let mut res = Response::new(body_of(bytes));
                    res.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(bytes));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    );
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB; `None`
/// when the process or the field is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Samples `VmRSS` of `pid` every `every` until `stop`: (max KiB, samples).
fn sample(pid: u32, every: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut max, mut samples) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            if let Some(rss) = status_kib(pid, "VmRSS") {
                max = max.max(rss);
                samples += 1;
            }
            std::thread::sleep(every);
        }
        (max, samples)
    })
}

/// Streams [`Options::bytes`] through a `kneo proxy` and measures it; see
/// the [module docs](self). `Err` says what kept it from measuring (the
/// binary would not start, the transfer failed); a short count is a
/// [`Report`] whose `bytes` differ from `expected`.
pub async fn run(options: &Options) -> Result<Report, String> {
    let (addr, upstream_task) = upstream(options.bytes)
        .await
        .map_err(|e| format!("cannot bind the upstream: {e}"))?;
    let upstream = format!("http://{addr}");
    let sidecar = Sidecar::start(&options.kneo, &upstream, &["--admin", "127.0.0.1:0"]).await?;
    let pid = sidecar.pid();
    let idle_rss_kib = status_kib(pid, "VmRSS").ok_or("no /proc/<pid>/status: not Linux?")?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(pid, options.sample_every, stop.clone());
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(HttpConnector::new());
    let req = Request::get(format!("http://{}/big", sidecar.addr()))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let transfer = async {
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("the request failed: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("the proxy answered {}", res.status()));
        }
        let mut body = res.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the body failed after {bytes} bytes: {e}"))?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
            }
        }
        Ok(bytes)
    };
    let received = transfer.await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (max_rss_kib, samples) = sampler
        .join()
        .map_err(|_| "the sampler thread panicked".to_owned())?;
    let vm_hwm_kib = status_kib(pid, "VmHWM");
    drop(sidecar);
    upstream_task.abort();
    Ok(Report {
        bytes: received?,
        expected: options.bytes,
        elapsed,
        idle_rss_kib,
        max_rss_kib,
        vm_hwm_kib: vm_hwm_kib.ok_or("the proxy exited during the transfer")?,
        samples,
    })
}
