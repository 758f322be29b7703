//! Every row of the status → error mapping, end to end through `kneo::Client`
//! against a loopback server: kind, code, status, retry hint, request id,
//! idempotency key and body.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use kneo::{codes, Attempts, ErrorBody, ErrorKind};
use kneo_tests::{fast, Recorded, Reply, ScriptedServer};

/// Sends one `method /thing` (with `key` as the caller's `Idempotency-Key`,
/// none stamped otherwise) to a server answering `reply`, with no retries.
async fn fail_once(reply: Reply, method: Method, key: Option<&str>) -> (kneo::Error, Recorded) {
    let server = ScriptedServer::start(vec![reply]).await;
    let client = server.client(
        fast()
            .max_attempts(1)
            .idempotency(kneo::idempotency::IdempotencyKeyLayer::new().methods([])),
    );
    let mut req = Request::builder().method(method).uri("/thing");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request");
    let err = client.request(req).await.expect_err("a non-success status");
    let mut reqs = server.requests();
    assert_eq!(reqs.len(), 1, "max_attempts(1) sends once");
    (err, reqs.remove(0))
}

struct Row {
    status: u16,
    method: Method,
    key: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    kind: ErrorKind,
    code: &'static str,
}

#[tokio::test]
async fn every_status_row_maps_end_to_end() {
    let json = r#"{"error":{"message":"details here"}}"#;
    let none: &[(&str, &str)] = &[];
    let row = |status, kind, code| Row {
        status,
        method: Method::GET,
        key: None,
        headers: none,
        body: json,
        kind,
        code,
    };
    let rows = [
        row(401, ErrorKind::Auth, codes::AUTHENTICATION_ERROR),
        row(403, ErrorKind::Permission, codes::PERMISSION_DENIED),
        row(404, ErrorKind::NotFound, codes::NOT_FOUND),
        row(409, ErrorKind::Conflict, codes::CONFLICT),
        Row {
            method: Method::POST,
            key: Some("key-mismatch-1"),
            ..row(
                409,
                ErrorKind::IdempotencyMismatch,
                codes::IDEMPOTENCY_KEY_MISMATCH,
            )
        },
        Row {
            method: Method::POST,
            key: Some("key-in-use-1"),
            body: r#"{"error":{"code":"idempotency_key_in_use","message":"still running"}}"#,
            ..row(409, ErrorKind::Conflict, codes::IDEMPOTENCY_KEY_IN_USE)
        },
        Row {
            method: Method::POST,
            key: Some("key-422"),
            headers: &[("content-type", "application/problem+json")],
            body: r#"{"type":"https://errors.example.com/idempotency-key-reused","title":"Key reused","detail":"other payload"}"#,
            ..row(
                422,
                ErrorKind::IdempotencyMismatch,
                codes::IDEMPOTENCY_KEY_MISMATCH,
            )
        },
        Row {
            method: Method::POST,
            key: Some("key-422-code"),
            body: r#"{"error":{"code":"idempotency_key_reused"}}"#,
            ..row(
                422,
                ErrorKind::IdempotencyMismatch,
                "idempotency_key_reused",
            )
        },
        // A 422 naming idempotency, but the request carried no key: plain Status.
        Row {
            method: Method::POST,
            headers: &[("content-type", "application/problem+json")],
            body: r#"{"type":"https://errors.example.com/idempotency-key-reused"}"#,
            ..row(422, ErrorKind::Status, codes::HTTP_ERROR)
        },
        // A 422 with a key whose problem is about something else: plain Status.
        Row {
            method: Method::POST,
            key: Some("key-422-other"),
            headers: &[("content-type", "application/problem+json")],
            body: r#"{"type":"https://errors.example.com/validation"}"#,
            ..row(422, ErrorKind::Status, codes::HTTP_ERROR)
        },
        Row {
            headers: &[("retry-after", "7")],
            ..row(429, ErrorKind::RateLimited, codes::RATE_LIMIT_EXCEEDED)
        },
        row(500, ErrorKind::Server, codes::SERVER_ERROR),
        row(502, ErrorKind::Server, codes::SERVER_ERROR),
        row(503, ErrorKind::Server, codes::SERVER_ERROR),
        row(504, ErrorKind::Server, codes::API_TIMEOUT),
        row(402, ErrorKind::Status, codes::INSUFFICIENT_CREDITS),
        row(400, ErrorKind::Status, codes::HTTP_ERROR),
        row(418, ErrorKind::Status, codes::HTTP_ERROR),
        // The server's own code wins over the default.
        Row {
            headers: &[("x-error-code", "bad_cursor")],
            ..row(400, ErrorKind::Status, "bad_cursor")
        },
    ];

    for r in rows {
        let mut reply = Reply::json(r.status, r.body);
        for (k, v) in r.headers {
            reply = reply.header(k, v);
        }
        let what = format!("{} {} key={:?}", r.status, r.method, r.key);
        let (err, sent) = fail_once(reply, r.method.clone(), r.key).await;

        assert_eq!(err.kind(), r.kind, "{what}: {err:?}");
        assert_eq!(err.code(), r.code, "{what}");
        assert_eq!(
            err.status(),
            Some(StatusCode::from_u16(r.status).expect("valid")),
            "{what}"
        );
        let want_hint = (r.status == 429).then(|| Duration::from_secs(7));
        assert_eq!(err.retry_after(), want_hint, "{what}");
        let sent_id = sent.header("x-request-id").expect("id stamped");
        assert_eq!(err.request_id(), Some(sent_id.as_str()), "{what}");
        assert_eq!(err.idempotency_key(), r.key, "{what}");
        assert_eq!(sent.header("idempotency-key").as_deref(), r.key, "{what}");
        let body: serde_json::Value = serde_json::from_str(r.body).expect("test json");
        assert_eq!(err.body(), &ErrorBody::Json(body), "{what}");
        assert!(!err.body_truncated(), "{what}");
        assert_eq!(err.method(), Some(&r.method), "{what}");
        assert_eq!(err.attempts(), 1, "{what}");
        assert_eq!(
            err.is_conflict(),
            matches!(r.kind, ErrorKind::Conflict | ErrorKind::IdempotencyMismatch),
            "{what}"
        );
    }
}

#[tokio::test]
async fn messages_and_problem_details_are_read_from_the_body() {
    let (err, _) = fail_once(
        Reply::json(401, r#"{"error":{"message":"key revoked"}}"#),
        Method::GET,
        None,
    )
    .await;
    assert_eq!(err.message(), "key revoked");

    let (err, _) = fail_once(
        Reply::json(
            422,
            r#"{"type":"https://errors.example.com/idempotency-mismatch","title":"Mismatch","detail":"payload differs"}"#,
        )
        .header("content-type", "application/problem+json"),
        Method::POST,
        Some("k-problem"),
    )
    .await;
    let problem = err.problem().expect("problem+json is parsed");
    assert_eq!(
        problem.r#type,
        "https://errors.example.com/idempotency-mismatch"
    );
    assert_eq!(err.message(), "payload differs");

    let (err, _) = fail_once(
        Reply::status(500).body("upstream exploded\n"),
        Method::GET,
        None,
    )
    .await;
    assert_eq!(
        err.body(),
        &ErrorBody::Text("upstream exploded\n".to_owned())
    );
    assert_eq!(err.message(), "upstream exploded");

    let (err, _) = fail_once(Reply::status(404), Method::GET, None).await;
    assert!(err.body().is_empty());
    assert_eq!(err.message(), "Not Found");
}

#[tokio::test]
async fn server_echoed_request_id_wins_when_well_formed() {
    let (err, sent) = fail_once(
        Reply::status(404).header("x-request-id", "srv-echo-404"),
        Method::GET,
        None,
    )
    .await;
    assert_ne!(sent.header("x-request-id").as_deref(), Some("srv-echo-404"));
    assert_eq!(err.request_id(), Some("srv-echo-404"));

    // A malformed echo is not trusted: the id that was sent is kept.
    let (err, sent) = fail_once(
        Reply::status(404).header("x-request-id", "bad echo"),
        Method::GET,
        None,
    )
    .await;
    let sent_id = sent.header("x-request-id").expect("id stamped");
    assert_eq!(err.request_id(), Some(sent_id.as_str()));
}

#[tokio::test]
async fn gateway_timeout_is_a_timeout() {
    let (err, _) = fail_once(Reply::status(504), Method::GET, None).await;
    assert!(err.is_timeout());
    assert_eq!(err.code(), codes::API_TIMEOUT);
    let (err, _) = fail_once(Reply::status(503), Method::GET, None).await;
    assert!(!err.is_timeout());
}

#[tokio::test]
async fn key_in_use_conflict_is_retried_with_the_same_key() {
    let in_use =
        r#"{"error":{"code":"idempotency_key_in_use","message":"original still running"}}"#;
    let server = ScriptedServer::start(vec![
        Reply::json(409, in_use),
        Reply::json(201, r#"{"id":1}"#),
    ])
    .await;
    let client = server.client(fast());
    let req = Request::post("/charges")
        .body(Full::new(Bytes::from_static(b"{\"amount\":5}")))
        .expect("valid request");
    let res = client.request(req).await.expect("second attempt succeeds");
    assert_eq!(res.status(), StatusCode::CREATED);
    let attempts = res.extensions().get::<Attempts>().expect("attempts");
    assert_eq!(attempts.count(), 2);
    assert_eq!(
        attempts.history()[0].outcome,
        kneo::AttemptOutcome::Status(StatusCode::CONFLICT)
    );

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let key = reqs[0].header("idempotency-key").expect("key stamped");
    assert_eq!(reqs[1].header("idempotency-key"), Some(key));

    // Still in use on every attempt: retried up to max, then the Conflict comes back.
    let server = ScriptedServer::start(vec![
        Reply::json(409, in_use).header("x-request-id", "srv-conflict")
    ])
    .await;
    let client = server.client(fast());
    let req = Request::post("/charges")
        .header("idempotency-key", "caller-key-9")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request");
    let err = client.request(req).await.expect_err("always in use");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(err.code(), codes::IDEMPOTENCY_KEY_IN_USE);
    assert_eq!(err.idempotency_key(), Some("caller-key-9"));
    assert_eq!(err.request_id(), Some("srv-conflict"));
    assert_eq!(err.attempts(), 3);
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn mismatch_and_plain_4xx_are_never_retried() {
    for (status, key) in [(409, Some("k-1")), (422, None), (400, None), (404, None)] {
        let server = ScriptedServer::start(vec![Reply::status(status)]).await;
        let client = server.client(fast());
        let mut req = Request::post("/x");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let req = req.body(Full::new(Bytes::new())).expect("valid request");
        let err = client.request(req).await.expect_err("4xx");
        assert_eq!(server.count(), 1, "{status} must not be retried");
        assert_eq!(err.attempts(), 1);
    }
}

#[tokio::test]
async fn undecodable_success_is_a_decode_error() {
    let server = ScriptedServer::start(vec![Reply::json(200, "not json")]).await;
    let err = server
        .client(fast())
        .post_json::<_, serde_json::Value>("/x", &serde_json::json!({}))
        .await
        .expect_err("not json");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(err.code(), codes::DECODE_ERROR);
    assert_eq!(err.status(), Some(StatusCode::OK));
    let sent = &server.requests()[0];
    assert_eq!(err.request_id(), sent.header("x-request-id").as_deref());
    assert_eq!(
        err.idempotency_key(),
        sent.header("idempotency-key").as_deref()
    );
    assert_eq!(server.count(), 1);
}
