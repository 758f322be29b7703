//! The rate-limit header families: never a panic; `reset_after()` is at
//! most `MAX_RESET_AFTER`; `is_exhausted()` is exactly `remaining() ==
//! Some(0)`; the same headers give the same answer.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use kneo_core::rate_limit::{self, MAX_RESET_AFTER};
use libfuzzer_sys::fuzz_target;

/// Every header a family reads, and one it does not.
const NAMES: &[&str] = &[
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "retry-after",
];

#[derive(Arbitrary, Debug)]
struct Input {
    now_secs: u64,
    headers: Vec<(u8, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let now = UNIX_EPOCH + Duration::from_secs(input.now_secs % 253_402_300_800);
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let got = rate_limit::from_headers_at(&headers, now);
    if let Some(rl) = &got {
        if let Some(reset) = rl.reset_after() {
            assert!(reset <= MAX_RESET_AFTER, "{rl:?}");
        }
        assert_eq!(rl.is_exhausted(), rl.remaining() == Some(0), "{rl:?}");
        if let Some(policy) = rl.policy() {
            assert!(!policy.is_empty(), "{rl:?}");
            assert!(!policy.chars().any(char::is_control), "{rl:?}");
        }
        assert!(
            rl.remaining().is_some() || rl.limit().is_some() || rl.reset_after().is_some(),
            "a value with nothing in it: {rl:?}"
        );
    }
    assert_eq!(rate_limit::from_headers_at(&headers, now), got);
});
