//! One problem vocabulary: the problems `kneo proxy` makes itself and those
//! kneo-server's idempotency layer makes in front of it come from kneo-core's
//! one module, under one `type` scheme, whoever answered.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use kneo::core::problem::{ProblemType, TYPE_PREFIX};
use kneo_tests::proxy_client;
use kneo_tests::sidecar::Sidecar;
use kneo_tests::{Reply, ScriptedServer};
use serde_json::Value;

/// `req` sent: the status and the body as JSON (null when it is not).
async fn send(req: Request<Full<Bytes>>) -> (StatusCode, Value) {
    let got = proxy_client::send(req).await;
    (
        got.status,
        serde_json::from_slice(&got.body).unwrap_or(Value::Null),
    )
}

fn post(proxy: &Sidecar, key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(proxy.url("/charges"))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid")
}

/// The problem's type is kneo's, and its title the type's.
fn assert_kneo_problem(problem: &Value, expected: ProblemType) {
    let uri = problem["type"].as_str().expect("a type");
    assert!(uri.starts_with(TYPE_PREFIX), "{problem}");
    assert_eq!(uri, expected.uri(), "{problem}");
    assert_eq!(problem["title"], expected.title(), "{problem}");
}

#[tokio::test]
async fn the_proxy_and_the_idempotency_layer_speak_one_vocabulary() {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let upstream = ScriptedServer::start(vec![Reply::json(201, r#"{"id":"ch_1"}"#)]).await;
    let proxy = Sidecar::start(kneo, &upstream.url(""), &["--idempotency", "memory"])
        .await
        .expect("starts");

    // kneo-server's layer: another body under a used key.
    let (status, _) = send(post(&proxy, "K-1", r#"{"amount":1}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, problem) = send(post(&proxy, "K-1", r#"{"amount":2}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_kneo_problem(&problem, ProblemType::IDEMPOTENCY_KEY_MISMATCH);
    assert_eq!(problem["code"], "idempotency_key_mismatch");

    // The proxy itself: a target it will not forward.
    let (status, problem) = send(
        Request::get(format!("http://{}/a/%2e%2e/%2e%2e/admin", proxy.addr()))
            .body(Full::default())
            .expect("valid"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_kneo_problem(&problem, ProblemType::BAD_REQUEST);

    // The proxy, for an upstream that is gone: kneo-core's error mapping.
    drop(upstream);
    let gone = Sidecar::start(kneo, "http://127.0.0.1:1", &["--max-attempts", "1"])
        .await
        .expect("starts");
    let (status, problem) = send(
        Request::get(format!("http://{}/x", gone.addr()))
            .body(Full::default())
            .expect("valid"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_kneo_problem(&problem, ProblemType::UPSTREAM_UNREACHABLE);
    assert_eq!(problem["code"], "api_connection");
    assert_eq!(problem["attempts"], 1);
}
