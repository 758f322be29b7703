//! The default retry quota: a cost-weighted token bucket that caps
//! amplification in an outage, refills on success, and belongs to one
//! service and its clones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo::{ClientLayer, ErrorKind};
use kneo_tests::{fast, Reply, ScriptedServer};
use tower::{Layer, ServiceExt};

type Stack = <ClientLayer as Layer<
    hyper_util::client::legacy::Client<HttpConnector, ReplayBody<Full<Bytes>>>,
>>::Service;

fn stack(layer: ClientLayer) -> Stack {
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Full<Bytes>>>(HttpConnector::new());
    layer.layer(transport)
}

/// A server that answers 503 while `down`, else 200.
async fn flaky() -> (ScriptedServer, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(true));
    let server = {
        let down = down.clone();
        ScriptedServer::with(move |_, _| {
            if down.load(Ordering::SeqCst) {
                Reply::status(503)
            } else {
                Reply::json(200, "{}")
            }
        })
        .await
    };
    (server, down)
}

/// Sends one GET; the attempts it took.
async fn attempts(svc: &Stack, server: &ScriptedServer) -> u32 {
    let req = Request::get(server.url("/x"))
        .body(Full::default())
        .expect("valid");
    match svc.clone().oneshot(req).await {
        Ok(res) => res
            .extensions()
            .get::<kneo::Attempts>()
            .map_or(1, kneo::Attempts::count),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Server);
            e.attempts()
        }
    }
}

#[tokio::test]
async fn an_outage_gets_capacity_over_cost_retries_then_successes_refill() {
    let (server, down) = flaky().await;
    let svc = stack(fast());
    for _ in 0..200 {
        attempts(&svc, &server).await;
    }
    // 500 tokens at 5 a retried 503: 100 retries in all, then none.
    assert_eq!(server.count(), 200 + 100, "amplification 1.5, not 3");
    assert_eq!(attempts(&svc, &server).await, 1, "the quota is spent");

    down.store(false, Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(attempts(&svc, &server).await, 1);
    }
    down.store(true, Ordering::SeqCst);
    assert_eq!(
        attempts(&svc, &server).await,
        3,
        "successes refilled the bucket"
    );

    // Without the quota every request uses every attempt.
    let unbounded = stack(fast().no_budget());
    let before = server.count();
    for _ in 0..50 {
        assert_eq!(attempts(&unbounded, &server).await, 3);
    }
    assert_eq!(server.count() - before, 150);
}

#[tokio::test]
async fn clones_share_the_quota_and_separate_services_do_not() {
    let (server, _down) = flaky().await;
    let a = stack(fast());
    for _ in 0..60 {
        attempts(&a.clone(), &server).await;
    }
    assert_eq!(
        attempts(&a.clone(), &server).await,
        1,
        "a clone sees the spent quota"
    );
    let b = stack(fast());
    assert_eq!(
        attempts(&b, &server).await,
        3,
        "another service has its own"
    );
}
