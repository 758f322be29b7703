//! `Error::from_response` over any status, headers and body: the message is
//! one line of at most 301 characters; the code is non-empty visible ASCII;
//! `Display` is one line; `status()` is the input status; the kind is one a
//! response can give, and the retry rule takes it without a panic.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use kneo_core::retry_rule::{is_retryable, RetryFacts, DEFAULT_RETRY_STATUSES};
use kneo_core::{is_valid_request_id, Error, ErrorKind, Sent};
use libfuzzer_sys::fuzz_target;

/// The headers `from_response` reads, and a few it does not.
const NAMES: &[&str] = &[
    "content-type",
    "x-error-code",
    "x-request-id",
    "request-id",
    "x-should-retry",
    "retry-after",
    "retry-after-ms",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-remaining",
    "x-ratelimit-remaining",
    "x-ratelimit-limit",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-remaining-tokens",
    "anthropic-ratelimit-requests-remaining",
    "www-authenticate",
];

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    headers: Vec<(u8, Vec<u8>)>,
    body: Vec<u8>,
    truncated: bool,
    method: u8,
    request_id: Option<String>,
    key: Option<String>,
    id_header: bool,
}

/// What breaks a line: every control character, U+2028 and U+2029.
fn breaks_lines(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

fuzz_target!(|input: Input| {
    let Ok(status) = StatusCode::from_u16(input.status) else {
        return;
    };
    let mut builder = http::Response::builder().status(status);
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = builder.header(name, value);
        }
    }
    let Ok(response) = builder.body(()) else {
        return;
    };
    let (parts, ()) = response.into_parts();
    let method = match input.method % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        _ => Method::PATCH,
    };
    let mut sent = Sent::new(method.clone());
    if let Some(id) = input.request_id {
        sent = sent.with_request_id(id);
    }
    if let Some(key) = input.key {
        sent = sent.with_idempotency_key(key);
    }
    if input.id_header {
        sent = sent.with_request_id_header(HeaderName::from_static("request-id"));
    }
    let keyed = sent.idempotency_key().is_some();

    let e = Error::from_response(&parts, &input.body, input.truncated, sent);

    assert_eq!(e.status(), Some(status));
    let message = e.message();
    assert!(
        !message.chars().any(breaks_lines),
        "message breaks lines: {message:?}"
    );
    assert!(message.chars().count() <= 301, "message too long");
    assert_eq!(message, message.trim(), "message is not trimmed");
    let code = e.code();
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_graphic()),
        "code {code:?}"
    );
    assert!(code.len() <= 128, "code {code:?}");
    let shown = e.to_string();
    assert!(!shown.chars().any(breaks_lines), "Display: {shown:?}");
    assert!(
        shown.starts_with(&format!("HTTP {}", status.as_u16())),
        "{shown:?}"
    );
    if let Some(id) = e.request_id() {
        assert!(is_valid_request_id(id.as_bytes()), "request id {id:?}");
    }
    assert_eq!(e.body_truncated(), input.truncated);
    assert!(
        !matches!(
            e.kind(),
            ErrorKind::Network | ErrorKind::Decode | ErrorKind::Request
        ),
        "a response gave {:?}",
        e.kind()
    );
    if matches!(e.kind(), ErrorKind::IdempotencyMismatch) {
        assert!(keyed, "a mismatch without a key");
    }
    if status.is_server_error() {
        assert_eq!(e.kind(), ErrorKind::Server);
    }
    if let Some(rl) = e.rate_limit() {
        assert_eq!(rl.is_exhausted(), rl.remaining() == Some(0));
    }

    let facts = RetryFacts::of_error(&e);
    let retryable = is_retryable(&facts, &DEFAULT_RETRY_STATUSES);
    assert_eq!(retryable, e.is_retryable(), "{e:?}");
    if e.kind() == ErrorKind::IdempotencyMismatch {
        assert!(!retryable);
    }
    if let Some(advice) = e.should_retry() {
        if e.kind() != ErrorKind::IdempotencyMismatch {
            assert_eq!(retryable, advice, "{e:?}");
        }
    }
    let raw = RetryFacts::of_response(status, &parts.headers, &method, keyed);
    let _ = is_retryable(&raw, &DEFAULT_RETRY_STATUSES);
});
