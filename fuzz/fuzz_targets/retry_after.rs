//! `Retry-After` and `retry-after-ms`: never a panic; a value is a hint
//! exactly when it is `digits[.digits]` or (for `Retry-After`) an HTTP-date;
//! a date's hint is never more than the date minus now; `from_headers_at`
//! agrees with the two parsers.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderValue};
use kneo_core::retry_after::{
    from_headers_at, parse_retry_after, parse_retry_after_ms, RETRY_AFTER_MS,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Seconds since the epoch, below year 9999 (httpdate's range).
    now_secs: u64,
    now_nanos: u32,
    retry_after: Option<Vec<u8>>,
    retry_after_ms: Option<Vec<u8>>,
}

/// A header value without its optional whitespace (RFC 9110 §5.5: spaces
/// and tabs, nothing else).
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// The grammar both headers accept: `digits[.digits]`.
fn is_decimal(text: &str) -> bool {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && frac.is_none_or(digits)
}

fuzz_target!(|input: Input| {
    let now = UNIX_EPOCH
        + Duration::new(
            input.now_secs % 253_402_300_800,
            input.now_nanos % 1_000_000_000,
        );

    if let Some(value) = &input.retry_after {
        let got = parse_retry_after(value, now);
        let text = std::str::from_utf8(value).ok().map(trim_ows);
        let decimal = text.is_some_and(is_decimal);
        let date = text.and_then(|t| httpdate::parse_http_date(t).ok());
        assert_eq!(
            got.is_some(),
            decimal || date.is_some(),
            "Retry-After {value:?} gave {got:?}"
        );
        if let (Some(got), Some(date), false) = (got, date, decimal) {
            let most = date.duration_since(now).unwrap_or(Duration::ZERO);
            assert!(got <= most, "{got:?} > date - now = {most:?}");
        }
        if decimal {
            // The whole part, in seconds, saturating.
            let whole = text.unwrap_or_default().split('.').next().unwrap_or("0");
            let secs = whole.bytes().fold(0u64, |a, b| {
                a.saturating_mul(10).saturating_add(u64::from(b - b'0'))
            });
            assert_eq!(got.map(|d| d.as_secs()), Some(secs), "{value:?}");
        }
    }

    if let Some(value) = &input.retry_after_ms {
        let got = parse_retry_after_ms(value);
        let text = std::str::from_utf8(value).ok().map(trim_ows);
        assert_eq!(
            got.is_some(),
            text.is_some_and(is_decimal),
            "retry-after-ms {value:?} gave {got:?}"
        );
        if let Some(d) = got {
            assert!(d <= Duration::from_millis(u64::MAX) + Duration::from_millis(1));
        }
    }

    let mut headers = HeaderMap::new();
    let ra = input
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    let ms = input
        .retry_after_ms
        .as_deref()
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    if let Some(v) = &ra {
        headers.insert(http::header::RETRY_AFTER, v.clone());
    }
    if let Some(v) = &ms {
        headers.insert(RETRY_AFTER_MS, v.clone());
    }
    let want = ms
        .as_ref()
        .and_then(|v| parse_retry_after_ms(v.as_bytes()))
        .or_else(|| {
            ra.as_ref()
                .and_then(|v| parse_retry_after(v.as_bytes(), now))
        });
    assert_eq!(from_headers_at(&headers, now), want);
});
