//! Table-driven test of the status → kind mapping: every row of the issue's table.

use std::time::Duration;

use http::{Method, Response, StatusCode};
use kneo_core::{codes, Error, ErrorKind, Sent};

struct Case {
    name: &'static str,
    status: u16,
    key: bool,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    kind: ErrorKind,
    code: &'static str,
    retry_after: Option<Duration>,
}

fn map(case: &Case) -> Error {
    let mut b = Response::builder().status(case.status);
    for (k, v) in case.headers {
        b = b.header(*k, *v);
    }
    let (parts, ()) = b.body(()).expect("valid test response").into_parts();
    let mut sent = Sent::new(Method::POST).with_request_id("sent-id");
    if case.key {
        sent = sent.with_idempotency_key("key-1");
    }
    Error::from_response(&parts, case.body.as_bytes(), false, sent)
}

#[test]
fn every_row_of_the_mapping_table() {
    use ErrorKind::*;
    let none: &[(&str, &str)] = &[];
    let secs = |s| Some(Duration::from_secs(s));
    let cases = [
        Case {
            name: "401",
            status: 401,
            key: false,
            headers: none,
            body: "",
            kind: Auth,
            code: codes::AUTHENTICATION_ERROR,
            retry_after: None,
        },
        Case {
            name: "403",
            status: 403,
            key: false,
            headers: none,
            body: "forbidden",
            kind: Permission,
            code: codes::PERMISSION_DENIED,
            retry_after: None,
        },
        Case {
            name: "404",
            status: 404,
            key: false,
            headers: none,
            body: r#"{"message":"run 7 does not exist"}"#,
            kind: NotFound,
            code: codes::NOT_FOUND,
            retry_after: None,
        },
        Case {
            name: "404 server code",
            status: 404,
            key: false,
            headers: none,
            body: r#"{"error":{"code":"flow_not_found"}}"#,
            kind: NotFound,
            code: "flow_not_found",
            retry_after: None,
        },
        Case {
            name: "409 no key",
            status: 409,
            key: false,
            headers: none,
            body: "",
            kind: Conflict,
            code: codes::CONFLICT,
            retry_after: None,
        },
        Case {
            name: "409 no key, server code",
            status: 409,
            key: false,
            headers: none,
            body: r#"{"code":"version_conflict"}"#,
            kind: Conflict,
            code: "version_conflict",
            retry_after: None,
        },
        Case {
            name: "409 key in use",
            status: 409,
            key: true,
            headers: none,
            body: r#"{"error":{"code":"idempotency_key_in_use"}}"#,
            kind: Conflict,
            code: codes::IDEMPOTENCY_KEY_IN_USE,
            retry_after: None,
        },
        Case {
            name: "409 with key",
            status: 409,
            key: true,
            headers: none,
            body: "",
            kind: IdempotencyMismatch,
            code: codes::IDEMPOTENCY_KEY_MISMATCH,
            retry_after: None,
        },
        Case {
            name: "409 with key, json",
            status: 409,
            key: true,
            headers: none,
            body: r#"{"message":"payload differs"}"#,
            kind: IdempotencyMismatch,
            code: codes::IDEMPOTENCY_KEY_MISMATCH,
            retry_after: None,
        },
        Case {
            name: "422 key, code names idempotency",
            status: 422,
            key: true,
            headers: none,
            body: r#"{"code":"idempotency_key_reused"}"#,
            kind: IdempotencyMismatch,
            code: "idempotency_key_reused",
            retry_after: None,
        },
        Case {
            name: "422 key, problem type names idempotency",
            status: 422,
            key: true,
            headers: &[("content-type", "application/problem+json")],
            body: r#"{"type":"https://example.com/errors/idempotency-key-mismatch","title":"mismatch"}"#,
            kind: IdempotencyMismatch,
            code: codes::IDEMPOTENCY_KEY_MISMATCH,
            retry_after: None,
        },
        Case {
            name: "422 no key",
            status: 422,
            key: false,
            headers: none,
            body: r#"{"code":"idempotency_key_reused"}"#,
            kind: Status,
            code: "idempotency_key_reused",
            retry_after: None,
        },
        Case {
            name: "422 key, unrelated",
            status: 422,
            key: true,
            headers: none,
            body: r#"{"code":"invalid_field"}"#,
            kind: Status,
            code: "invalid_field",
            retry_after: None,
        },
        Case {
            name: "429",
            status: 429,
            key: false,
            headers: &[("retry-after", "3")],
            body: "",
            kind: RateLimited,
            code: codes::RATE_LIMIT_EXCEEDED,
            retry_after: secs(3),
        },
        Case {
            name: "429 ms",
            status: 429,
            key: false,
            headers: &[("retry-after", "3"), ("retry-after-ms", "1500")],
            body: "",
            kind: RateLimited,
            code: codes::RATE_LIMIT_EXCEEDED,
            retry_after: Some(Duration::from_millis(1500)),
        },
        Case {
            name: "429 garbage hint",
            status: 429,
            key: false,
            headers: &[("retry-after", "soon")],
            body: "",
            kind: RateLimited,
            code: codes::RATE_LIMIT_EXCEEDED,
            retry_after: None,
        },
        Case {
            name: "500",
            status: 500,
            key: false,
            headers: none,
            body: "boom",
            kind: Server,
            code: codes::SERVER_ERROR,
            retry_after: None,
        },
        Case {
            name: "502",
            status: 502,
            key: false,
            headers: none,
            body: "",
            kind: Server,
            code: codes::SERVER_ERROR,
            retry_after: None,
        },
        Case {
            name: "503 hint",
            status: 503,
            key: true,
            headers: &[("retry-after", "1")],
            body: "",
            kind: Server,
            code: codes::SERVER_ERROR,
            retry_after: secs(1),
        },
        Case {
            name: "504",
            status: 504,
            key: false,
            headers: none,
            body: "",
            kind: Server,
            code: codes::API_TIMEOUT,
            retry_after: None,
        },
        Case {
            name: "402",
            status: 402,
            key: false,
            headers: none,
            body: "",
            kind: Status,
            code: codes::INSUFFICIENT_CREDITS,
            retry_after: None,
        },
        Case {
            name: "400",
            status: 400,
            key: false,
            headers: none,
            body: "",
            kind: Status,
            code: codes::HTTP_ERROR,
            retry_after: None,
        },
        Case {
            name: "418 x-error-code",
            status: 418,
            key: false,
            headers: &[("x-error-code", "teapot")],
            body: r#"{"code":"ignored"}"#,
            kind: Status,
            code: "teapot",
            retry_after: None,
        },
        Case {
            name: "302",
            status: 302,
            key: false,
            headers: none,
            body: "",
            kind: Status,
            code: codes::HTTP_ERROR,
            retry_after: None,
        },
        Case {
            name: "problem code member",
            status: 400,
            key: false,
            headers: &[("content-type", "application/problem+json; charset=utf-8")],
            body: r#"{"type":"about:blank","code":"bad_input","status":200}"#,
            kind: Status,
            code: "bad_input",
            retry_after: None,
        },
        Case {
            name: "code of wrong type ignored",
            status: 404,
            key: false,
            headers: none,
            body: r#"{"code":404}"#,
            kind: NotFound,
            code: codes::NOT_FOUND,
            retry_after: None,
        },
    ];
    for case in &cases {
        let err = map(case);
        assert_eq!(err.kind(), case.kind, "{}: kind", case.name);
        assert_eq!(err.code(), case.code, "{}: code", case.name);
        assert_eq!(
            err.status(),
            Some(StatusCode::from_u16(case.status).expect("valid")),
            "{}: status",
            case.name
        );
        assert_eq!(
            err.retry_after(),
            case.retry_after,
            "{}: retry_after",
            case.name
        );
        assert_eq!(
            err.idempotency_key(),
            case.key.then_some("key-1"),
            "{}: key",
            case.name
        );
        assert_eq!(
            err.request_id(),
            Some("sent-id"),
            "{}: request id",
            case.name
        );
    }
}

#[test]
fn network_errors() {
    let sent = Sent::new(Method::GET).with_request_id("r1");
    let refused = Error::network(
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        sent.clone(),
    );
    assert_eq!(refused.kind(), ErrorKind::Network);
    assert_eq!(refused.code(), codes::API_CONNECTION);
    assert!(refused.is_connect() && !refused.is_timeout() && refused.is_retryable());
    assert_eq!(refused.status(), None);
    assert_eq!(refused.request_id(), Some("r1"));
    assert!(std::error::Error::source(&refused).is_some());

    let timeout = Error::timeout(Duration::from_millis(50), sent.clone());
    assert_eq!(timeout.code(), codes::API_TIMEOUT);
    assert!(timeout.is_timeout() && !timeout.is_connect());

    // A timeout deep in a source chain is still found.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let deep = Error::network(
        Wrapper(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        sent,
    );
    assert!(deep.is_timeout());
    assert_eq!(deep.code(), codes::API_TIMEOUT);

    // A reset after sending: retryable for GET, not for a POST without a key.
    let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert!(Error::network(reset(), Sent::new(Method::GET)).is_retryable());
    assert!(!Error::network(reset(), Sent::new(Method::POST)).is_retryable());
    assert!(
        Error::network(reset(), Sent::new(Method::POST).with_idempotency_key("k")).is_retryable()
    );
}

#[test]
fn predicates_and_retry_advice() {
    let err = |status: u16, key: bool, headers: &'static [(&'static str, &'static str)]| {
        map(&Case {
            name: "",
            status,
            key,
            headers,
            body: "",
            kind: ErrorKind::Status,
            code: "",
            retry_after: None,
        })
    };
    assert!(err(409, false, &[]).is_conflict());
    assert!(
        err(409, true, &[]).is_conflict(),
        "a mismatch is a conflict too"
    );
    assert!(!err(404, false, &[]).is_conflict());
    assert!(err(503, false, &[]).is_retryable());
    assert!(err(429, false, &[]).is_retryable());
    assert!(!err(500, false, &[]).is_retryable());
    assert!(!err(409, true, &[]).is_retryable());
    assert!(err(500, false, &[("x-should-retry", "true")]).is_retryable());
    assert!(!err(503, false, &[("x-should-retry", "false")]).is_retryable());
    assert!(
        err(503, false, &[("x-should-retry", "maybe")]).is_retryable(),
        "garbage advice is ignored"
    );
    assert!(err(504, false, &[]).is_timeout());
}

#[test]
fn echoed_request_id_wins_only_when_well_formed() {
    let map_with = |echo: &'static str| {
        let (parts, ()) = Response::builder()
            .status(500)
            .header("x-request-id", echo)
            .body(())
            .expect("valid")
            .into_parts();
        Error::from_response(
            &parts,
            b"",
            false,
            Sent::new(Method::GET).with_request_id("sent"),
        )
    };
    assert_eq!(map_with("server-7").request_id(), Some("server-7"));
    assert_eq!(map_with("has space").request_id(), Some("sent"));
}

#[test]
fn echo_is_read_from_the_header_the_id_was_sent_in() {
    let request_id = http::HeaderName::from_static("request-id");
    let mut sent_headers = http::HeaderMap::new();
    sent_headers.insert(&request_id, "sent".parse().expect("valid"));
    let sent = || Sent::from_headers(&Method::GET, &sent_headers, &request_id);
    let map_with = |name: &'static str| {
        let (parts, ()) = Response::builder()
            .status(500)
            .header(name, "server-7")
            .body(())
            .expect("valid")
            .into_parts();
        Error::from_response(&parts, b"", false, sent())
    };
    assert_eq!(map_with("request-id").request_id(), Some("server-7"));
    assert_eq!(map_with("x-request-id").request_id(), Some("sent"));
}

#[test]
fn problem_details_are_typed_and_http_status_wins() {
    let (parts, ()) = Response::builder()
        .status(403)
        .header("content-type", "application/problem+json")
        .body(())
        .expect("valid")
        .into_parts();
    let body = br#"{"type":"https://example.com/probs/out-of-credit","title":"You do not have enough credit.","status":200,"detail":"Your balance is 30.","instance":"/account/12345/msgs/abc","balance":30,"title_extra":true}"#;
    let err = Error::from_response(&parts, body, false, Sent::new(Method::GET));
    let p = err.problem().expect("problem+json parsed");
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(p.r#type, "https://example.com/probs/out-of-credit");
    assert_eq!(p.detail.as_deref(), Some("Your balance is 30."));
    assert_eq!(p.instance.as_deref(), Some("/account/12345/msgs/abc"));
    assert_eq!(p.extensions["balance"], 30);
    assert_eq!(err.message(), "Your balance is 30.");

    // Plain JSON is not a problem.
    let (parts, ()) = Response::builder()
        .status(403)
        .body(())
        .expect("valid")
        .into_parts();
    assert!(
        Error::from_response(&parts, body, false, Sent::new(Method::GET))
            .problem()
            .is_none()
    );
}

#[test]
fn bodies_json_text_empty_truncated() {
    let (parts, ()) = Response::builder()
        .status(500)
        .body(())
        .expect("valid")
        .into_parts();
    let e = |b: &[u8], t| Error::from_response(&parts, b, t, Sent::new(Method::GET));
    assert!(e(br#"{"a":1}"#, false).body().as_json().is_some());
    assert_eq!(e(b"oops", false).body().as_text(), Some("oops"));
    assert!(e(b"", false).body().is_empty());
    let cut = e(br#"{"a":"#, true);
    assert!(cut.body_truncated());
    assert!(cut.body().as_text().is_some());
    // Invalid UTF-8 never panics.
    assert!(e(b"\xff\xfe\xfd", false).body().as_text().is_some());
    // Deeply nested JSON does not blow the stack.
    let deep = "[".repeat(100_000);
    assert!(e(deep.as_bytes(), false).body().as_text().is_some());
}

#[test]
fn display_reads_like_the_spec_and_hides_secrets() {
    let (parts, ()) = Response::builder()
        .status(404)
        .header("x-request-id", "req-9")
        .header("authorization", "Bearer sk-secret")
        .body(())
        .expect("valid")
        .into_parts();
    let body = br#"{"error":{"message":"run 7 does not exist","api_key":"sk-secret"}}"#;
    let err = Error::from_response(&parts, body, false, Sent::new(Method::GET));
    assert_eq!(
        err.to_string(),
        "HTTP 404 Not Found: run 7 does not exist (code=not_found, request_id=req-9)"
    );
    let debug = format!("{err:?}");
    assert!(!debug.contains("sk-secret"), "{debug}");
    assert!(!err.to_string().contains("sk-secret"));

    let huge = "x".repeat(100_000);
    let (parts, ()) = Response::builder()
        .status(500)
        .body(())
        .expect("valid")
        .into_parts();
    let err = Error::from_response(&parts, huge.as_bytes(), false, Sent::new(Method::GET));
    assert!(
        err.to_string().len() < 1_000,
        "Display never prints a whole body"
    );
    assert!(
        format!("{err:?}").len() < 1_000,
        "Debug never prints a whole body"
    );
}

#[test]
fn error_is_one_pointer_and_thread_safe() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
    assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
}

#[test]
fn unicode_line_breaks_never_reach_a_message() {
    let (parts, ()) = Response::builder()
        .status(418)
        .body(())
        .expect("valid test response")
        .into_parts();
    for body in [
        "line one\u{2028}line two",
        "para one\u{2029}para two",
        "next\u{85}line",
        "{\"error\":{\"message\":\"json\u{2028}message\"}}",
    ] {
        let err = Error::from_response(&parts, body.as_bytes(), false, Sent::new(Method::GET));
        for text in [
            err.message().to_owned(),
            err.to_string(),
            format!("{err:?}"),
        ] {
            assert!(
                !text.contains(['\u{2028}', '\u{2029}', '\u{85}', '\n', '\r']),
                "{text:?}"
            );
            assert_eq!(text.lines().count(), 1, "{text:?}");
        }
    }
}

#[test]
fn debug_and_attempts_agree() {
    let err = Error::network(
        std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        Sent::new(Method::GET),
    );
    assert_eq!(err.attempts(), 1);
    assert!(format!("{err:?}").contains("attempts: 1"), "{err:?}");
}

#[test]
fn exhausted_403_is_a_rate_limit_and_the_reset_stands_in_for_retry_after() {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 120;
    let github = |remaining: &str, retry_after: Option<&str>| {
        let mut b = Response::builder()
            .status(403)
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", remaining)
            .header("x-ratelimit-used", "5000")
            .header("x-ratelimit-reset", reset.to_string())
            .header("x-ratelimit-resource", "core");
        if let Some(ra) = retry_after {
            b = b.header("retry-after", ra);
        }
        let (parts, ()) = b.body(()).expect("valid").into_parts();
        Error::from_response(&parts, b"", false, Sent::new(Method::GET))
    };
    let err = github("0", None);
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.code(), codes::RATE_LIMIT_EXCEEDED);
    let wait = err.retry_after().expect("the reset stands in");
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    let rl = err.rate_limit().expect("parsed");
    assert_eq!(
        (rl.remaining(), rl.limit(), rl.policy()),
        (Some(0), Some(5000), Some("core"))
    );
    assert!(
        err.is_retryable(),
        "retried as the 429 it stands for (if the wait is short enough)"
    );

    assert_eq!(
        github("0", Some("7")).retry_after(),
        Some(Duration::from_secs(7)),
        "Retry-After wins"
    );
    let err = github("12", None);
    assert_eq!(err.kind(), ErrorKind::Permission, "quota left: a real 403");
    assert_eq!(err.retry_after(), None);
    assert!(!err.is_retryable());
}
