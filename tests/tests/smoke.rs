//! The main path, end to end: a POST retried through 503s with one key and one id.

use kneo::ErrorKind;
use kneo_tests::{fast, Reply, ScriptedServer};

#[tokio::test]
async fn post_retried_with_same_key_and_id() {
    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(503),
        Reply::json(201, r#"{"id":7}"#),
    ])
    .await;
    let client = server.client(fast());

    #[derive(serde::Deserialize)]
    struct Created {
        id: u64,
    }
    let created: Created = client
        .post_json("/runs", &serde_json::json!({"n": 1}))
        .await
        .expect("created");
    assert_eq!(created.id, 7);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let key = reqs[0].header("idempotency-key").expect("key stamped");
    let id = reqs[0].header("x-request-id").expect("id stamped");
    for r in &reqs {
        assert_eq!(r.header("idempotency-key").as_deref(), Some(key.as_str()));
        assert_eq!(r.header("x-request-id").as_deref(), Some(id.as_str()));
        assert_eq!(&r.body[..], br#"{"n":1}"#);
    }
}

#[tokio::test]
async fn not_found_is_typed() {
    let server = ScriptedServer::start(vec![Reply::json(
        404,
        r#"{"error":{"message":"run 7 does not exist"}}"#,
    )
    .header("x-request-id", "srv-1")])
    .await;
    let client = server.client(fast());
    let err = client
        .get_json::<serde_json::Value>("/runs/7")
        .await
        .expect_err("404");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.request_id(), Some("srv-1"));
    assert_eq!(
        err.to_string(),
        "HTTP 404 Not Found: run 7 does not exist (code=not_found, request_id=srv-1)"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn connection_refused_is_network_and_retried() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = kneo::Client::builder()
        .base_url(format!("http://127.0.0.1:{port}"))
        .layer(fast())
        .build()
        .expect("client");
    let err = client
        .get_json::<serde_json::Value>("/")
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(err.attempts(), 3);
}
