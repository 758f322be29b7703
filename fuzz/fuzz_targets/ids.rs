//! Request ids and keys: `is_valid_request_id` is exactly "1 to 128 bytes,
//! each in 0x21..=0x7e"; `Sent` keeps an id (and a key, 1 to 1,024 of the
//! same bytes) exactly when it is valid, from a builder or from headers.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use kneo_core::{is_valid_request_id, Sent, IDEMPOTENCY_KEY, X_REQUEST_ID};
use libfuzzer_sys::fuzz_target;

fn visible(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn reference_id(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len()) && visible(bytes)
}

fn reference_key(bytes: &[u8]) -> bool {
    (1..=1024).contains(&bytes.len()) && visible(bytes)
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(is_valid_request_id(data), reference_id(data), "{data:?}");

    let text = String::from_utf8_lossy(data).into_owned();
    let valid = reference_id(text.as_bytes());
    let sent = Sent::new(Method::POST).with_request_id(text.clone());
    assert_eq!(sent.request_id(), valid.then_some(text.as_str()));
    let valid_key = reference_key(text.as_bytes());
    let sent = sent.with_idempotency_key(text.clone());
    assert_eq!(sent.idempotency_key(), valid_key.then_some(text.as_str()));
    assert_eq!(sent.is_replay_safe(), valid_key);

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, value.clone());
        headers.insert(IDEMPOTENCY_KEY, value.clone());
        let sent = Sent::from_headers(&Method::GET, &headers, &X_REQUEST_ID);
        let as_text = std::str::from_utf8(data).ok();
        assert_eq!(sent.request_id(), as_text.filter(|_| reference_id(data)));
        assert_eq!(
            sent.idempotency_key(),
            as_text.filter(|_| reference_key(data))
        );
        // The echo of a response is kept on the same terms, else the id sent.
        let echo = Sent::new(Method::GET)
            .with_request_id("sent-1")
            .with_request_id_header(HeaderName::from_static("request-id"));
        let mut response = HeaderMap::new();
        response.insert("request-id", value);
        let reported = echo.reported_request_id(&response);
        let want = as_text.filter(|_| reference_id(data)).unwrap_or("sent-1");
        assert_eq!(reported.as_deref(), Some(want));
    }
});
