//! kneo's layers mixed with other people's: tower-http's `TraceLayer` on every
//! attempt and tower's `ConcurrencyLimit` on every logical request, over a
//! hyper-util client you build yourself.
//!
//! ```text
//! cargo run --example custom_stack
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kneo::retry::{Backoff, ReplayBody, RetryLayer};
use kneo::ServiceBuilderExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::trace::TraceLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("kneo=info,tower_http=debug")
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let upstream = start_flaky_upstream().await?;

    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let svc = ServiceBuilder::new()
        // Once per logical request, outermost first.
        .kneo_request_id(kneo::request_id::RequestIdLayer::new())
        .kneo_idempotency_key(kneo::idempotency::IdempotencyKeyLayer::new())
        .concurrency_limit(4)
        .kneo_retry(RetryLayer::new().backoff(Backoff::new().base(Duration::from_millis(20))))
        // Once per attempt: every retry gets its own span.
        .layer(TraceLayer::new_for_http())
        .kneo_map_error(kneo::map_error::MapErrorLayer::new())
        .service(transport);

    let calls = (0..8).map(|i| {
        let svc = svc.clone();
        let uri = format!("{upstream}/items/{i}");
        async move {
            let req = Request::get(uri)
                .body(Full::default())
                .expect("valid request");
            let res = svc.oneshot(req).await?;
            let attempts = res
                .extensions()
                .get::<kneo::Attempts>()
                .map_or(1, kneo::Attempts::count);
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((i, attempts, body))
        }
    });
    for result in futures_join_all(calls).await {
        match result {
            Ok((i, attempts, body)) => {
                println!(
                    "item {i}: {} after {attempts} attempt(s)",
                    String::from_utf8_lossy(&body)
                )
            }
            Err(e) => println!("failed: {e}"),
        }
    }
    Ok(())
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task did not panic"));
    }
    out
}

/// An upstream that answers every third request with 503.
async fn start_flaky_upstream() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let (status, body) = if n % 3 == 1 {
                            (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"busy"))
                        } else {
                            (
                                StatusCode::OK,
                                Bytes::from(format!("{{\"path\":\"{}\"}}", req.uri().path())),
                            )
                        };
                        let mut res = Response::new(Full::new(body));
                        *res.status_mut() = status;
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}
