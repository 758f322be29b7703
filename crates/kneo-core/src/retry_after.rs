//! Parsing the server's "wait before retrying" hints.
//!
//! Two headers are understood:
//!
//! - `retry-after-ms`: milliseconds as a non-negative decimal number. It wins
//!   when present and valid, because it is the more precise of the two.
//! - `Retry-After` ([RFC 9110 §10.2.3]): delay-seconds, or an HTTP-date in any
//!   of the three RFC 9110 forms. A date in the past means "retry now" (zero).
//!
//! Anything else (negative numbers, `inf`, `nan`, text, `1.5s`, `1.2.3`, bytes
//! that are not ASCII) means "no hint": a garbage header is never trusted.
//! Numbers too large for a [`Duration`] saturate instead of panicking; callers
//! cap the hint anyway (see `kneo`'s `max_retry_after`).
//!
//! Documented leniency: delay-seconds is an integer in RFC 9110, but many
//! servers send a decimal fraction (`1.5`), so a plain decimal fraction is
//! accepted for both headers.
//!
//! [RFC 9110 §10.2.3]: https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::HeaderMap;
//! use kneo_core::retry_after;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "2".parse().unwrap());
//! assert_eq!(retry_after::from_headers(&headers), Some(Duration::from_secs(2)));
//!
//! headers.insert("retry-after-ms", "250".parse().unwrap());
//! assert_eq!(retry_after::from_headers(&headers), Some(Duration::from_millis(250)));
//!
//! assert_eq!(retry_after::parse_retry_after(b"soon", SystemTime::now()), None);
//! ```

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, RETRY_AFTER};

/// The non-standard `retry-after-ms` header (OpenAI, Anthropic, Azure and others send it).
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// The server's hint from `headers`, measured against the system clock.
///
/// See the [module docs](self) for what is accepted.
pub fn from_headers(headers: &HeaderMap) -> Option<Duration> {
    from_headers_at(headers, SystemTime::now())
}

/// The server's hint from `headers`, with HTTP-dates measured against `now`.
pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get(RETRY_AFTER_MS)
        .and_then(|v| parse_retry_after_ms(v.as_bytes()))
        .or_else(|| {
            headers
                .get(RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.as_bytes(), now))
        })
}

/// Parses one `Retry-After` value: delay-seconds or an HTTP-date.
///
/// A date in the past gives zero; anything unparseable gives `None`.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = trim_ows(std::str::from_utf8(value).ok()?);
    if let Some(d) = parse_decimal(text, 1_000_000_000) {
        return Some(d);
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses one `retry-after-ms` value: non-negative milliseconds.
pub fn parse_retry_after_ms(value: &[u8]) -> Option<Duration> {
    let text = trim_ows(std::str::from_utf8(value).ok()?);
    parse_decimal(text, 1_000_000)
}

/// `text` without the optional whitespace around a field value: spaces and
/// tabs only (RFC 9110 §5.5), not `str::trim`'s Unicode whitespace, so
/// `3\r` or a no-break space before the number is garbage, not a hint.
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Parses `digits[.digits]` where one whole unit is `nanos_per_unit` nanoseconds.
///
/// Hand-written rather than `f64::from_str` because that accepts `inf`, `nan`,
/// `1e3` and `-0`, and loses precision; here the whole part saturates.
pub(crate) fn parse_decimal(text: &str, nanos_per_unit: u64) -> Option<Duration> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let units = whole.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    // Fractional part in nanoseconds: the first nine digits are plenty.
    let mut frac_nanos = 0u64;
    let mut scale = nanos_per_unit;
    for b in frac.unwrap_or("").bytes().take(9) {
        scale /= 10;
        frac_nanos += u64::from(b - b'0') * scale;
    }
    let whole_nanos = u128::from(units) * u128::from(nanos_per_unit);
    let total = whole_nanos + u128::from(frac_nanos);
    let secs = total / 1_000_000_000;
    let nanos = (total % 1_000_000_000) as u32;
    Some(match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, nanos),
        Err(_) => Duration::MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retry_after_table() {
        let s = Duration::from_secs;
        let cases: &[(&[u8], Option<Duration>)] = &[
            (b"0", Some(s(0))),
            (b"120", Some(s(120))),
            (b"  7 ", Some(s(7))),
            (b"\t3\t", Some(s(3))),
            (b"1.5", Some(Duration::from_millis(1500))),
            (b"007", Some(s(7))),
            // overflow saturates, never panics
            (b"99999999999999999999999999", Some(s(u64::MAX))),
            (b"18446744073709551616", Some(s(u64::MAX))),
            // three HTTP-date forms, 10 s after `now`
            (b"Sun, 06 Nov 1994 08:49:47 GMT", Some(s(10))),
            (b"Sunday, 06-Nov-94 08:49:47 GMT", Some(s(10))),
            (b"Sun Nov  6 08:49:47 1994", Some(s(10))),
            // past date means zero
            (b"Sun, 06 Nov 1994 08:00:00 GMT", Some(s(0))),
            (b"Thu, 01 Jan 1970 00:00:00 GMT", Some(s(0))),
            // garbage means no hint
            (b"-1", None),
            (b"-0", None),
            (b"+5", None),
            (b"1.", None),
            (b".5", None),
            (b"1.2.3", None),
            (b"1.5s", None),
            (b"1e3", None),
            (b"inf", None),
            (b"NaN", None),
            (b"infinity", None),
            (b"soon", None),
            (b"", None),
            (b"   ", None),
            (b"1 2", None),
            (b"\xff\xfe", None),
            (b"Sun, 32 Nov 1994 08:49:37 GMT", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_retry_after(input, now()),
                *want,
                "Retry-After {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn retry_after_ms_table() {
        let ms = Duration::from_millis;
        let cases: &[(&[u8], Option<Duration>)] = &[
            (b"0", Some(ms(0))),
            (b"250", Some(ms(250))),
            (b" 250 ", Some(ms(250))),
            (b"1.5", Some(Duration::from_micros(1500))),
            (
                b"99999999999999999999999",
                Some(Duration::from_millis(u64::MAX)),
            ),
            (b"-5", None),
            (b"nan", None),
            (b"inf", None),
            (b"250ms", None),
            (b"", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_retry_after_ms(input),
                *want,
                "retry-after-ms {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Found by `fuzz/fuzz_targets/retry_after.rs`: `str::trim` took any
    /// Unicode whitespace, so `3\r`, `\u{a0}3` or `3\u{3000}` were hints.
    #[test]
    fn only_spaces_and_tabs_are_trimmed() {
        let garbage: &[&[u8]] = &[
            b"3\r",
            b"\n3",
            b"3\x0b",
            "\u{a0}3".as_bytes(),
            "3\u{3000}".as_bytes(),
            "\u{85}3".as_bytes(),
        ];
        for input in garbage {
            assert_eq!(parse_retry_after(input, now()), None, "{input:?}");
            assert_eq!(parse_retry_after_ms(input), None, "{input:?}");
        }
        assert_eq!(
            parse_retry_after(b" \t3\t ", now()),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after_ms(b"\t3 "),
            Some(Duration::from_millis(3))
        );
    }

    #[test]
    fn ms_wins_only_when_valid() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(from_headers_at(&h, now()), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER_MS, HeaderValue::from_static("garbage"));
        assert_eq!(from_headers_at(&h, now()), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER_MS, HeaderValue::from_static("1200"));
        assert_eq!(
            from_headers_at(&h, now()),
            Some(Duration::from_millis(1200))
        );
        assert_eq!(from_headers_at(&HeaderMap::new(), now()), None);
    }
}
