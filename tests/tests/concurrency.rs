//! 1,000 concurrent logical requests through clones of one service, a fifth of
//! them answered 503 first: none lost, none duplicated, none mixed up.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kneo::retry::ReplayBody;
use kneo::Attempts;
use kneo::Sent;
use kneo_tests::{Reply, ScriptedServer};
use tower::{Layer, ServiceExt};

const N: usize = 1000;

/// One logical request as the caller saw it.
#[derive(Debug)]
struct Seen {
    index: usize,
    id: String,
    key: String,
    echoed: String,
    attempts: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_each_succeed_exactly_once() {
    // Every fifth arrival is a 503, but only the first time an id is seen,
    // so each logical request is rejected at most once. 200s echo the id.
    let first_seen = Mutex::new(HashSet::new());
    let server = ScriptedServer::with(move |n, req| {
        let id = req.header("x-request-id").unwrap_or_default();
        let new = first_seen.lock().expect("not poisoned").insert(id.clone());
        if new && n % 5 == 0 {
            Reply::status(503)
        } else {
            Reply::status(200).header("x-request-id", &id).body(id)
        }
    })
    .await;

    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, ReplayBody<Full<Bytes>>>(HttpConnector::new());
    let service = kneo_tests::fast().layer(transport);

    let url = server.url("/items");
    let tasks: Vec<_> = (0..N)
        .map(|index| {
            let svc = service.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let req = Request::post(url)
                    .body(Full::new(Bytes::from(format!("item-{index}"))))
                    .expect("valid request");
                let res = svc.oneshot(req).await.expect("every request succeeds");
                assert_eq!(res.status(), StatusCode::OK);
                let sent = res
                    .extensions()
                    .get::<Sent>()
                    .expect("identity on response");
                let id = sent.request_id().expect("an id").to_owned();
                let key = sent.idempotency_key().expect("a key").to_owned();
                let attempts = res
                    .extensions()
                    .get::<Attempts>()
                    .expect("attempts")
                    .count();
                let body = res.into_body().collect().await.expect("body").to_bytes();
                let echoed = String::from_utf8(body.to_vec()).expect("utf-8 echo");
                Seen {
                    index,
                    id,
                    key,
                    echoed,
                    attempts,
                }
            })
        })
        .collect();
    let seen: Vec<Seen> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task did not panic"))
        .collect();

    // The caller's side: every response is its own.
    assert_eq!(seen.len(), N);
    let ids: HashSet<_> = seen.iter().map(|s| s.id.as_str()).collect();
    let keys: HashSet<_> = seen.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(ids.len(), N, "every logical request has its own id");
    assert_eq!(keys.len(), N, "every logical request has its own key");
    for s in &seen {
        assert_eq!(
            s.echoed, s.id,
            "request {} got someone else's answer",
            s.index
        );
    }

    // The server's side: one success per logical request, with its own body.
    let by_id: HashMap<&str, &Seen> = seen.iter().map(|s| (s.id.as_str(), s)).collect();
    let recorded = server.requests();
    let mut successes: HashMap<String, usize> = HashMap::new();
    let mut arrivals: HashMap<String, u32> = HashMap::new();
    let mut rejected = 0;
    let mut rejected_ids = HashSet::new();
    let mut first = HashSet::new();
    for (n, r) in recorded.iter().enumerate() {
        let id = r.header("x-request-id").expect("id stamped");
        let key = r.header("idempotency-key").expect("key stamped");
        let s = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("unknown id {id} at arrival {n}"));
        assert_eq!(key, s.key, "id and key travel together");
        assert_eq!(
            r.body,
            format!("item-{}", s.index),
            "request {}'s body",
            s.index
        );
        *arrivals.entry(id.clone()).or_default() += 1;
        let was_new = first.insert(id.clone());
        if was_new && n % 5 == 0 {
            rejected += 1;
            rejected_ids.insert(id);
        } else {
            *successes.entry(id).or_default() += 1;
        }
    }
    assert!(rejected > 0, "the script rejects some");
    assert_eq!(recorded.len(), N + rejected, "one retry per rejection");
    assert_eq!(successes.len(), N, "no logical request lost");
    assert!(
        successes.values().all(|&c| c == 1),
        "no logical request applied twice"
    );
    for s in &seen {
        let want = if rejected_ids.contains(&s.id) { 2 } else { 1 };
        assert_eq!(s.attempts, want, "request {}", s.index);
        assert_eq!(arrivals[&s.id], want, "request {}", s.index);
    }
}
