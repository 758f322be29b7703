//! Request ids and idempotency keys end to end: caller values kept, malformed
//! ids replaced, one id and one key per logical request on every attempt, and
//! fresh ones for every new logical request.

use std::collections::HashSet;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use kneo::Sent;

use kneo_tests::{fast, Reply, ScriptedServer};

fn flaky() -> Vec<Reply> {
    vec![
        Reply::status(503),
        Reply::status(429),
        Reply::json(201, "{}"),
    ]
}

#[tokio::test]
async fn caller_id_and_key_arrive_unchanged_on_every_attempt() {
    let server = ScriptedServer::start(flaky()).await;
    let req = Request::post("/orders")
        .header("x-request-id", "caller-req-17")
        .header("idempotency-key", "caller-key-17")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request");
    let res = server
        .client(fast())
        .request(req)
        .await
        .expect("third attempt");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.header("x-request-id").as_deref(), Some("caller-req-17"));
        assert_eq!(
            r.header("idempotency-key").as_deref(),
            Some("caller-key-17")
        );
        assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(r.headers.get_all("idempotency-key").iter().count(), 1);
    }
    let sent = res
        .extensions()
        .get::<Sent>()
        .expect("identity on response");
    assert_eq!(sent.request_id(), Some("caller-req-17"));
    assert_eq!(sent.idempotency_key(), Some("caller-key-17"));
    assert_eq!(sent.method(), Some(&http::Method::POST));
}

#[tokio::test]
async fn malformed_caller_id_is_replaced_consistently() {
    let server = ScriptedServer::start(flaky()).await;
    let req = Request::post("/orders")
        .header("x-request-id", HeaderValue::from_static("bad id"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request");
    let res = server
        .client(fast())
        .request(req)
        .await
        .expect("third attempt");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let id = reqs[0].header("x-request-id").expect("an id was sent");
    assert_ne!(id, "bad id");
    assert!(kneo::core::is_valid_request_id(id.as_bytes()), "{id:?}");
    for r in &reqs {
        assert_eq!(r.header("x-request-id").as_deref(), Some(id.as_str()));
        assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);
    }
    let on_response = res
        .extensions()
        .get::<Sent>()
        .expect("identity on response");
    assert_eq!(on_response.request_id(), Some(id.as_str()));
}

#[tokio::test]
async fn stamped_id_and_key_are_the_same_on_every_attempt() {
    let server = ScriptedServer::start(flaky()).await;
    let req = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request");
    let res = server
        .client(fast())
        .request(req)
        .await
        .expect("third attempt");
    assert_eq!(res.status(), StatusCode::CREATED);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let id = reqs[0].header("x-request-id").expect("id stamped");
    let key = reqs[0].header("idempotency-key").expect("key stamped");
    assert_ne!(id, key, "the id and the key are independent values");
    for r in &reqs[1..] {
        assert_eq!(r.header("x-request-id").as_deref(), Some(id.as_str()));
        assert_eq!(r.header("idempotency-key").as_deref(), Some(key.as_str()));
    }
    let on_response = res.extensions().get::<Sent>().expect("identity");
    assert_eq!(on_response.idempotency_key(), Some(key.as_str()));
}

#[tokio::test]
async fn each_logical_request_gets_its_own_id_and_key() {
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::json(200, "{}")]).await;
    let client = server.client(fast());
    for _ in 0..5 {
        let req = Request::post("/orders")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request");
        client.request(req).await.expect("ok");
    }
    let reqs = server.requests();
    assert_eq!(reqs.len(), 6, "one retry, then five first-time successes");
    let ids: HashSet<_> = reqs
        .iter()
        .filter_map(|r| r.header("x-request-id"))
        .collect();
    let keys: HashSet<_> = reqs
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(keys.len(), 5);
}

#[tokio::test]
async fn get_gets_an_id_but_no_key() {
    let server = ScriptedServer::start(vec![Reply::json(200, "{}")]).await;
    let _: serde_json::Value = server.client(fast()).get_json("/x").await.expect("ok");
    let r = &server.requests()[0];
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("idempotency-key"), None);
}

#[tokio::test]
async fn errors_carry_the_id_and_key_sent() {
    let server = ScriptedServer::start(vec![Reply::status(400)]).await;
    let err = server
        .client(fast())
        .post_json::<_, serde_json::Value>("/orders", &serde_json::json!({"a": 1}))
        .await
        .expect_err("400");
    let r = &server.requests()[0];
    assert_eq!(err.request_id(), r.header("x-request-id").as_deref());
    assert_eq!(
        err.idempotency_key(),
        r.header("idempotency-key").as_deref()
    );
    assert!(err.idempotency_key().is_some());
}

#[tokio::test]
async fn custom_request_id_header_is_used_by_every_layer() {
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(404).header("request-id", "srv-echo-7"),
    ])
    .await;
    let layer = fast().request_id(
        kneo::request_id::RequestIdLayer::new().header(http::HeaderName::from_static("request-id")),
    );
    let client = kneo::Client::builder()
        .base_url(server.url(""))
        .layer(layer)
        .build()
        .expect("client builds");
    let err = client
        .request(Request::get("/x").body(Full::default()).expect("valid"))
        .await
        .expect_err("404");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let id = reqs[0]
        .header("request-id")
        .expect("id in the custom header");
    assert_eq!(reqs[0].header("x-request-id"), None);
    assert_eq!(reqs[1].header("request-id").as_deref(), Some(id.as_str()));
    assert_eq!(err.history()[0].request_id.as_deref(), Some(id.as_str()));
    // The server's echo, in the configured header, wins.
    assert_eq!(err.request_id(), Some("srv-echo-7"));
    assert_eq!(err.history()[1].request_id.as_deref(), Some("srv-echo-7"));
}

#[tokio::test]
async fn a_stack_built_by_hand_learns_the_custom_header_from_the_request_id_layer() {
    use kneo::idempotency::IdempotencyKeyLayer;
    use kneo::map_error::MapErrorLayer;
    use kneo::request_id::RequestIdLayer;
    use kneo::ServiceBuilderExt;
    use tower::{ServiceBuilder, ServiceExt};

    let header = http::HeaderName::from_static("request-id");
    for echo in [None, Some("srv-echo-9")] {
        let mut reply = Reply::status(404);
        if let Some(echo) = echo {
            reply = reply.header("request-id", echo);
        }
        let server = ScriptedServer::start(vec![Reply::status(503), reply]).await;
        let transport =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<kneo::retry::ReplayBody<Full<bytes::Bytes>>>();
        // The header is named once, on the request-id layer.
        let svc = ServiceBuilder::new()
            .kneo_request_id(RequestIdLayer::new().header(header.clone()))
            .kneo_idempotency_key(IdempotencyKeyLayer::new())
            .kneo_retry(kneo_tests::fast_retry())
            .kneo_map_error(MapErrorLayer::new())
            .service(transport);
        let err = svc
            .oneshot(
                Request::get(server.url("/x"))
                    .body(Full::default())
                    .expect("valid"),
            )
            .await
            .expect_err("404");
        let sent = server.requests()[0]
            .header("request-id")
            .expect("sent in the custom header");
        assert_eq!(
            err.request_id(),
            Some(echo.unwrap_or(&sent)),
            "echo {echo:?}"
        );
        assert_eq!(err.history()[0].request_id.as_deref(), Some(sent.as_str()));
        assert_eq!(err.sent().request_id(), Some(sent.as_str()));
    }
}
