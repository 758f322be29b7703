//! Properties of kneo-core's parsers, on stable and in the normal test suite:
//! the invariants the cargo-fuzz targets `retry_after`, `from_response` and
//! `ids` (in `fuzz/fuzz_targets/`) assert, checked over generated inputs that
//! are mostly near-valid (so they reach past the first check) and partly
//! arbitrary bytes. The rate-limit families have theirs in `rate_limit.rs`.
//!
//! Each module below says what it proves; the reference models in them
//! (the decimal grammar, the status table, the one-line rule) restate the
//! rules the module docs and the README document.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::sample::select;

/// The last second httpdate can format or parse: 9999-12-31T23:59:59Z.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Any instant httpdate can represent, to the nanosecond.
fn any_now() -> impl Strategy<Value = SystemTime> {
    (0..=MAX_HTTP_DATE_SECS, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `text` without the optional whitespace of a field value (RFC 9110 §5.5:
/// spaces and tabs, nothing else).
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Arbitrary bytes, short.
fn any_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

mod retry_after {
    //! `Retry-After` and `retry-after-ms` (`fuzz/fuzz_targets/retry_after.rs`):
    //! a value is a hint exactly when it is `digits[.digits]` or (for
    //! `Retry-After`) an HTTP-date, after trimming spaces and tabs only;
    //! a decimal gives its exact value, whole part saturating and fraction
    //! truncated to the nanosecond, so `retry-after-ms` never exceeds
    //! `u64::MAX` ms plus a millisecond; a date gives `date - now`, zero
    //! when past (never negative, never more than the date is away); delta
    //! seconds and every HTTP-date form round-trip; signs, exponents, units,
    //! other whitespace and bytes that are not UTF-8 are no hint at all;
    //! `from_headers_at` takes a valid `retry-after-ms` over `Retry-After`.

    use super::*;

    use http::header::RETRY_AFTER;
    use http::{HeaderMap, HeaderValue};
    use kneo_core::retry_after::{
        from_headers_at, parse_retry_after, parse_retry_after_ms, RETRY_AFTER_MS,
    };

    /// The one grammar both headers accept: `digits[.digits]`.
    fn is_decimal(text: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match text.split_once('.') {
            Some((whole, frac)) => digits(whole) && digits(frac),
            None => digits(text),
        }
    }

    /// What a `digits[.digits]` text is worth in `unit`s (one second or one
    /// millisecond): the whole part saturating at `u64::MAX` units, the
    /// fraction truncated to the nanosecond.
    fn decimal_value(text: &str, unit: Unit) -> Duration {
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        // All digits: the only way `parse` fails is overflow.
        let whole = whole.parse::<u64>().unwrap_or(u64::MAX);
        let (whole, nanos_digits) = match unit {
            Unit::Seconds => (Duration::from_secs(whole), 9),
            Unit::Millis => (Duration::from_millis(whole), 6),
        };
        let frac: String = frac
            .chars()
            .chain(std::iter::repeat('0'))
            .take(nanos_digits)
            .collect();
        let frac = frac.parse::<u64>().expect("invariant: at most nine digits");
        whole
            .checked_add(Duration::from_nanos(frac))
            .expect("invariant: u64::MAX units plus under one unit fit a Duration")
    }

    /// What one whole number in a header stands for.
    #[derive(Debug, Clone, Copy)]
    enum Unit {
        Seconds,
        Millis,
    }

    /// Up to two spaces or tabs, the optional whitespace around a value.
    fn ows() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    /// `digits[.digits]`: short, and long enough to overflow a `u64`.
    fn decimal() -> impl Strategy<Value = String> {
        (
            prop_oneof!["[0-9]{1,4}", "[0-9]{15,25}"],
            proptest::option::of("[0-9]{1,12}"),
        )
            .prop_map(|(whole, frac)| match frac {
                Some(frac) => format!("{whole}.{frac}"),
                None => whole,
            })
    }

    /// The three HTTP-date forms of RFC 9110 §5.6.7 for `at` (whole seconds):
    /// IMF-fixdate, RFC 850 (only for 1970 to 2069, as its two-digit year
    /// reads) and asctime.
    fn date_forms(at: SystemTime) -> Vec<String> {
        let fixdate = httpdate::fmt_http_date(at);
        // "Sun, 06 Nov 1994 08:49:37 GMT"
        let parts: Vec<&str> = fixdate.split(' ').collect();
        let [wday, day, mon, year, time, _gmt] = parts[..] else {
            panic!("httpdate wrote {fixdate:?}");
        };
        let wday = wday.trim_end_matches(',');
        let long_wday = match wday {
            "Mon" => "Monday",
            "Tue" => "Tuesday",
            "Wed" => "Wednesday",
            "Thu" => "Thursday",
            "Fri" => "Friday",
            "Sat" => "Saturday",
            _ => "Sunday",
        };
        let day_num: u32 = day.parse().expect("httpdate writes a numeric day");
        let mut forms = vec![
            fixdate.clone(),
            format!("{wday} {mon} {day_num:>2} {time} {year}"),
        ];
        if ("1970".."2070").contains(&year) {
            forms.push(format!(
                "{long_wday}, {day}-{mon}-{} {time} GMT",
                &year[2..]
            ));
        }
        forms
    }

    /// An instant httpdate can write, in whole seconds.
    fn date_secs() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..=MAX_HTTP_DATE_SECS,
            // 1970 to 2069, where every form applies.
            0u64..3_155_760_000,
        ]
    }

    /// An HTTP-date in any of its forms, with optional whitespace around.
    fn http_date() -> impl Strategy<Value = String> {
        (date_secs(), any::<prop::sample::Index>(), ows(), ows()).prop_map(
            |(secs, form, before, after)| {
                let forms = date_forms(UNIX_EPOCH + Duration::from_secs(secs));
                format!("{before}{}{after}", form.get(&forms))
            },
        )
    }

    /// `text` with one character replaced by, or `extra` inserted at, the
    /// character index `at` picks: a near miss.
    fn mutate(text: &str, at: prop::sample::Index, extra: char, replace: bool) -> String {
        let chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len() + 1);
        let mut out: String = chars[..i].iter().collect();
        out.push(extra);
        let rest = if replace && i < chars.len() { i + 1 } else { i };
        out.extend(&chars[rest..]);
        out
    }

    /// Characters that turn a hint into garbage wherever they go.
    const JUNK: &[char] = &[
        '-', '+', 'e', 'E', ',', ';', 's', 'x', '_', '/', '\r', '\n', '\u{b}', '\u{a0}',
        '\u{3000}', '\u{85}', '\u{2028}',
    ];

    /// Values for either header: arbitrary bytes, decimals, dates, and near
    /// misses of both.
    fn hint_value() -> impl Strategy<Value = Vec<u8>> {
        let near_char = prop_oneof![
            select(JUNK),
            any::<char>(),
            select(&['.', ' ', '0', '9'][..])
        ];
        prop_oneof![
            any_bytes(40),
            (ows(), decimal(), ows()).prop_map(|(a, d, b)| format!("{a}{d}{b}").into_bytes()),
            http_date().prop_map(String::into_bytes),
            "[-+0-9. \t\r\neEinfaNs]{0,12}".prop_map(String::into_bytes),
            (
                decimal(),
                any::<prop::sample::Index>(),
                near_char.clone(),
                any::<bool>()
            )
                .prop_map(|(d, at, c, r)| mutate(&d, at, c, r).into_bytes()),
            (
                http_date(),
                any::<prop::sample::Index>(),
                near_char,
                any::<bool>()
            )
                .prop_map(|(d, at, c, r)| mutate(&d, at, c, r).into_bytes()),
        ]
    }

    proptest! {
        #[test]
        fn retry_after_is_a_hint_exactly_when_decimal_or_date(
            value in hint_value(),
            now in any_now(),
        ) {
            let got = parse_retry_after(&value, now);
            let text = std::str::from_utf8(&value).ok().map(trim_ows);
            let decimal = text.filter(|t| is_decimal(t));
            let date = text.and_then(|t| httpdate::parse_http_date(t).ok());
            prop_assert_eq!(got.is_some(), decimal.is_some() || date.is_some(), "{:?}", value);
            if let Some(decimal) = decimal {
                prop_assert_eq!(got, Some(decimal_value(decimal, Unit::Seconds)));
            } else if let Some(date) = date {
                let until = date.duration_since(now).unwrap_or(Duration::ZERO);
                prop_assert_eq!(got, Some(until), "date {:?}", date);
            }
        }

        #[test]
        fn delta_seconds_round_trip(
            secs in any::<u64>(),
            zeros in 0usize..3,
            before in ows(),
            after in ows(),
            now in any_now(),
        ) {
            let text = format!("{before}{}{secs}{after}", "0".repeat(zeros));
            prop_assert_eq!(
                parse_retry_after(text.as_bytes(), now),
                Some(Duration::from_secs(secs))
            );
        }

        #[test]
        fn every_http_date_form_round_trips(
            secs in date_secs(),
            now in any_now(),
            before in ows(),
            after in ows(),
        ) {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let until = at.duration_since(now).unwrap_or(Duration::ZERO);
            for form in date_forms(at) {
                let value = format!("{before}{form}{after}");
                let got = parse_retry_after(value.as_bytes(), now);
                prop_assert_eq!(got, Some(until), "{:?} at {:?}", value, now);
            }
        }

        #[test]
        fn retry_after_ms_is_a_hint_exactly_when_decimal(value in hint_value()) {
            let got = parse_retry_after_ms(&value);
            let text = std::str::from_utf8(&value).ok().map(trim_ows);
            let decimal = text.filter(|t| is_decimal(t));
            prop_assert_eq!(got, decimal.map(|d| decimal_value(d, Unit::Millis)), "{:?}", value);
            if let Some(d) = got {
                let cap = Duration::from_millis(u64::MAX) + Duration::from_millis(1);
                prop_assert!(d < cap, "{:?} above the cap", d);
            }
        }

        #[test]
        fn milliseconds_round_trip(ms in any::<u64>(), before in ows(), after in ows()) {
            let text = format!("{before}{ms}{after}");
            prop_assert_eq!(
                parse_retry_after_ms(text.as_bytes()),
                Some(Duration::from_millis(ms))
            );
        }

        #[test]
        fn garbage_in_a_number_is_no_hint(
            number in decimal(),
            at in any::<prop::sample::Index>(),
            junk in select(JUNK),
            replace in any::<bool>(),
            high in 0x80u8..=0xff,
            now in any_now(),
        ) {
            let garbage = mutate(&number, at, junk, replace);
            prop_assert_eq!(parse_retry_after(garbage.as_bytes(), now), None, "{:?}", garbage);
            prop_assert_eq!(parse_retry_after_ms(garbage.as_bytes()), None, "{:?}", garbage);
            // A sign is never read as one: a negative wait is no wait.
            let negative = format!("-{number}");
            prop_assert_eq!(parse_retry_after(negative.as_bytes(), now), None);
            prop_assert_eq!(parse_retry_after_ms(negative.as_bytes()), None);
            // A byte that is not UTF-8 anywhere spoils the whole value.
            let mut bytes = number.into_bytes();
            bytes.insert(at.index(bytes.len() + 1), high);
            prop_assert_eq!(parse_retry_after(&bytes, now), None);
            prop_assert_eq!(parse_retry_after_ms(&bytes), None);
        }

        #[test]
        fn from_headers_takes_a_valid_ms_hint_first(
            retry_after in proptest::option::of(hint_value()),
            retry_after_ms in proptest::option::of(hint_value()),
            now in any_now(),
        ) {
            let valid = |v: Option<Vec<u8>>| v.and_then(|v| HeaderValue::from_bytes(&v).ok());
            let (ra, ms) = (valid(retry_after), valid(retry_after_ms));
            let mut headers = HeaderMap::new();
            if let Some(v) = &ra {
                headers.insert(RETRY_AFTER, v.clone());
            }
            if let Some(v) = &ms {
                headers.insert(RETRY_AFTER_MS, v.clone());
            }
            let want = ms
                .and_then(|v| parse_retry_after_ms(v.as_bytes()))
                .or_else(|| ra.and_then(|v| parse_retry_after(v.as_bytes(), now)));
            prop_assert_eq!(from_headers_at(&headers, now), want);
        }
    }
}

mod from_response {
    //! `Error::from_response` over any status, headers and body
    //! (`fuzz/fuzz_targets/from_response.rs`): `status()` is the input
    //! status; the message is one trimmed line of at most 301 characters,
    //! the body's most specific text cleaned by the one rule (line breaks to
    //! spaces, 300 characters and `…`), else the reason phrase; the code is
    //! 1 to 128 visible ASCII bytes, the server's valid one or the kind's
    //! default; `Display` is one line starting `HTTP <status>`; the request id
    //! is a valid one; the kind is the status table's (never `Network`,
    //! `Decode`, `Request`; a mismatch only for a keyed request; every 5xx
    //! `Server`); problem details come only from an untruncated
    //! `application/problem+json` object and carry the response's status;
    //! the hint is the `Retry-After` headers', else an exhausted rate
    //! limit's reset, at most `MAX_RESET_AFTER`; the retry rule agrees with
    //! `is_retryable()` and the server's advice.

    use super::*;

    use http::response::Parts;
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
    use kneo_core::rate_limit::MAX_RESET_AFTER;
    use kneo_core::retry_after;
    use kneo_core::retry_rule::{is_retryable, RetryFacts, DEFAULT_RETRY_STATUSES};
    use kneo_core::{codes, is_valid_request_id, Error, ErrorKind, Sent, PROBLEM_JSON};
    use serde_json::{json, Value};

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

    /// The statuses with a row of their own in the table, and the rest.
    fn status() -> impl Strategy<Value = StatusCode> {
        let rows: &[u16] = &[400, 401, 402, 403, 404, 409, 422, 429, 500, 502, 503, 504];
        prop_oneof![3 => select(rows), 1 => 100u16..=999]
            .prop_map(|s| StatusCode::from_u16(s).expect("invariant: 100 to 999 is a status"))
    }

    /// Text for codes and messages: tokens, the codes that change a kind,
    /// line breaks of every sort, long runs, anything.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[!-~]{1,20}",
            select(
                &[
                    codes::IDEMPOTENCY_KEY_IN_USE,
                    codes::IDEMPOTENCY_KEY_MISMATCH,
                    "Idempotency-Error",
                    "rate_limit_exceeded",
                    "",
                    " ",
                ][..]
            )
            .prop_map(str::to_owned),
            "[a-z \t\n\r\u{0}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}]{0,30}",
            "[a-zé ]{290,320}",
            "[!-~]{120,135}",
            "\\PC{0,20}",
            any::<String>(),
        ]
    }

    /// A JSON body in one of the shapes servers send.
    fn json_body() -> impl Strategy<Value = Vec<u8>> {
        let member = || proptest::option::of(text());
        (0usize..6, member(), member(), member(), member()).prop_map(
            |(shape, code, message, kind, detail)| {
                let mut object = serde_json::Map::new();
                let mut put = |key: &str, value: Option<String>| {
                    if let Some(v) = value {
                        object.insert(key.to_owned(), Value::String(v));
                    }
                };
                match shape {
                    0 => {
                        let mut error = serde_json::Map::new();
                        if let Some(c) = code {
                            error.insert("code".to_owned(), Value::String(c));
                        }
                        if let Some(m) = message {
                            error.insert("message".to_owned(), Value::String(m));
                        }
                        object.insert("error".to_owned(), Value::Object(error));
                    }
                    1 => {
                        put("code", code);
                        put("message", message);
                    }
                    2 => {
                        put("type", kind);
                        put("title", message);
                        put("detail", detail);
                        put("code", code);
                        object.insert("status".to_owned(), json!(599));
                    }
                    3 => put("error", message),
                    4 => {
                        object.insert("error".to_owned(), json!(code));
                        object.insert("message".to_owned(), json!(42));
                    }
                    _ => return json!([code, message]).to_string().into_bytes(),
                }
                Value::Object(object).to_string().into_bytes()
            },
        )
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            2 => json_body(),
            1 => any_bytes(64),
            1 => text().prop_map(String::into_bytes),
        ]
    }

    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any_bytes(24),
            "[!-~]{1,20}".prop_map(String::into_bytes),
            select(
                &[
                    "true",
                    "false",
                    " TRUE ",
                    "False",
                    "maybe",
                    "0",
                    "1",
                    "5",
                    "-1",
                    "0.250",
                    "application/problem+json",
                    "Application/Problem+JSON; charset=utf-8",
                    "application/json",
                    "text/plain",
                    "remaining=0",
                    "\"p\";r=0;t=5",
                    codes::IDEMPOTENCY_KEY_IN_USE,
                    "req-1",
                ][..]
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            "[0-9]{1,4}".prop_map(String::into_bytes),
        ]
    }

    /// Everything one call of `from_response` takes.
    #[derive(Debug, Clone)]
    struct Input {
        status: StatusCode,
        headers: Vec<(usize, Vec<u8>)>,
        body: Vec<u8>,
        truncated: bool,
        method: Method,
        request_id: Option<String>,
        key: Option<String>,
        id_header: bool,
    }

    fn input() -> impl Strategy<Value = Input> {
        let methods = [Method::GET, Method::POST, Method::PUT, Method::PATCH];
        let id = || proptest::option::of(prop_oneof!["[!-~]{1,20}", text()]);
        (
            status(),
            proptest::collection::vec((0..NAMES.len(), header_value()), 0..6),
            body(),
            prop::bool::weighted(0.2),
            select(methods.to_vec()),
            id(),
            id(),
            any::<bool>(),
        )
            .prop_map(
                |(status, headers, body, truncated, method, request_id, key, id_header)| Input {
                    status,
                    headers,
                    body,
                    truncated,
                    method,
                    request_id,
                    key,
                    id_header,
                },
            )
    }

    /// The response parts and the `Sent` an input describes.
    fn parts_and_sent(input: &Input) -> (Parts, Sent) {
        let mut headers = HeaderMap::new();
        for (name, value) in &input.headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(HeaderName::from_static(NAMES[*name]), value);
            }
        }
        let mut sent = Sent::new(input.method.clone());
        if let Some(id) = &input.request_id {
            sent = sent.with_request_id(id.clone());
        }
        if let Some(key) = &input.key {
            sent = sent.with_idempotency_key(key.clone());
        }
        if input.id_header {
            sent = sent.with_request_id_header(HeaderName::from_static("request-id"));
        }
        (parts(input.status, headers), sent)
    }

    fn parts(status: StatusCode, headers: HeaderMap) -> Parts {
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response.into_parts().0
    }

    /// What breaks a line: every control character, U+2028 and U+2029.
    fn breaks_lines(c: char) -> bool {
        c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
    }

    /// The documented message rule: line breaks become spaces, the result
    /// is trimmed and cut at 300 characters with `…`.
    fn one_line(text: &str) -> String {
        let cleaned: String = text
            .chars()
            .map(|c| if breaks_lines(c) { ' ' } else { c })
            .collect();
        let cleaned = cleaned.trim();
        if cleaned.chars().count() > 300 {
            let mut cut: String = cleaned.chars().take(300).collect();
            cut.push('…');
            cut
        } else {
            cleaned.to_owned()
        }
    }

    /// The message when the body offers none: the reason phrase.
    fn reason(status: StatusCode) -> String {
        status.canonical_reason().unwrap_or("").to_owned()
    }

    /// The status table of `kind_for` (README and `mapping.rs` docs): the
    /// kind and kneo's default code for a response.
    fn table(
        status: StatusCode,
        keyed: bool,
        code: Option<&str>,
        problem_type: Option<&str>,
        exhausted: bool,
    ) -> (ErrorKind, &'static str) {
        let idempotency = |s: &str| s.to_ascii_lowercase().contains("idempotency");
        let mismatch = (
            ErrorKind::IdempotencyMismatch,
            codes::IDEMPOTENCY_KEY_MISMATCH,
        );
        match status.as_u16() {
            401 => (ErrorKind::Auth, codes::AUTHENTICATION_ERROR),
            402 => (ErrorKind::Status, codes::INSUFFICIENT_CREDITS),
            403 if exhausted => (ErrorKind::RateLimited, codes::RATE_LIMIT_EXCEEDED),
            403 => (ErrorKind::Permission, codes::PERMISSION_DENIED),
            404 => (ErrorKind::NotFound, codes::NOT_FOUND),
            409 if !keyed => (ErrorKind::Conflict, codes::CONFLICT),
            409 if code == Some(codes::IDEMPOTENCY_KEY_IN_USE) => {
                (ErrorKind::Conflict, codes::IDEMPOTENCY_KEY_IN_USE)
            }
            409 => mismatch,
            422 if keyed
                && (code.is_some_and(idempotency) || problem_type.is_some_and(idempotency)) =>
            {
                mismatch
            }
            429 => (ErrorKind::RateLimited, codes::RATE_LIMIT_EXCEEDED),
            504 => (ErrorKind::Server, codes::API_TIMEOUT),
            500..=599 => (ErrorKind::Server, codes::SERVER_ERROR),
            _ => (ErrorKind::Status, codes::HTTP_ERROR),
        }
    }

    /// A server code for the table: mostly one that can change a kind.
    fn table_code() -> impl Strategy<Value = String> {
        prop_oneof![
            select(
                &[
                    codes::IDEMPOTENCY_KEY_IN_USE,
                    codes::IDEMPOTENCY_KEY_MISMATCH,
                    "IdempotencyError",
                    "idempotency key in use",
                    "conflict",
                ][..]
            )
            .prop_map(str::to_owned),
            text(),
        ]
    }

    /// A problem type for the table: mostly one that names idempotency.
    fn table_problem_type() -> impl Strategy<Value = String> {
        prop_oneof![
            select(
                &[
                    "https://example.com/problems/idempotency-key-reused",
                    "urn:IDEMPOTENCY",
                    "about:blank",
                    "https://example.com/problems/out-of-credit",
                ][..]
            )
            .prop_map(str::to_owned),
            text(),
        ]
    }

    /// A problem member: a string, or a value of the wrong type.
    fn member(wrong: Value) -> impl Strategy<Value = Value> {
        prop_oneof![text().prop_map(Value::String), Just(wrong)]
    }

    /// A decimal hint, or printable junk (never a date).
    fn seconds_or_junk() -> impl Strategy<Value = String> {
        prop_oneof!["[0-9]{1,9}(\\.[0-9]{1,3})?", "[-a-z0-9. ]{0,8}"]
    }

    proptest! {
        #[test]
        fn from_response_keeps_its_invariants(input in input()) {
            let (parts, sent) = parts_and_sent(&input);
            let keyed = sent.idempotency_key().is_some();
            let e = Error::from_response(&parts, &input.body, input.truncated, sent);

            prop_assert_eq!(e.status(), Some(input.status));
            let message = e.message();
            prop_assert!(!message.chars().any(breaks_lines), "message breaks lines: {:?}", message);
            prop_assert!(message.chars().count() <= 301, "message too long: {:?}", message);
            prop_assert_eq!(message, message.trim(), "message is not trimmed");
            let code = e.code();
            prop_assert!(
                (1..=128).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_graphic()),
                "code {:?}", code
            );
            let shown = e.to_string();
            prop_assert!(!shown.chars().any(breaks_lines), "Display: {:?}", shown);
            let head = format!("HTTP {}", input.status.as_u16());
            prop_assert!(shown.starts_with(&head), "{:?}", shown);
            if let Some(id) = e.request_id() {
                prop_assert!(is_valid_request_id(id.as_bytes()), "request id {:?}", id);
            }
            prop_assert_eq!(e.body_truncated(), input.truncated);
            prop_assert!(
                !matches!(e.kind(), ErrorKind::Network | ErrorKind::Decode | ErrorKind::Request),
                "a response gave {:?}", e.kind()
            );
            if e.kind() == ErrorKind::IdempotencyMismatch {
                prop_assert!(keyed, "a mismatch without a key");
            }
            if input.status.is_server_error() {
                prop_assert_eq!(e.kind(), ErrorKind::Server);
            }
            if let Some(rl) = e.rate_limit() {
                prop_assert_eq!(rl.is_exhausted(), rl.remaining() == Some(0));
            }
            if let Some(p) = e.problem() {
                prop_assert_eq!(p.status, input.status);
                prop_assert!(!input.truncated, "a truncated body gave a problem");
            }
            // Whether a hint parses does not depend on the clock.
            if retry_after::from_headers_at(&parts.headers, UNIX_EPOCH).is_none() {
                if let Some(wait) = e.retry_after() {
                    let exhausted = e.rate_limit().is_some_and(|rl| rl.is_exhausted());
                    prop_assert!(exhausted, "a hint from nowhere: {:?}", wait);
                    prop_assert!(wait <= MAX_RESET_AFTER, "{:?} above the cap", wait);
                }
            }

            let facts = RetryFacts::of_error(&e);
            let retryable = is_retryable(&facts, &DEFAULT_RETRY_STATUSES);
            prop_assert_eq!(retryable, e.is_retryable(), "{:?}", e);
            if e.kind() == ErrorKind::IdempotencyMismatch {
                prop_assert!(!retryable);
            } else if let Some(advice) = e.should_retry() {
                prop_assert_eq!(retryable, advice, "{:?}", e);
            }
            let raw = RetryFacts::of_response(input.status, &parts.headers, &input.method, keyed);
            let _ = is_retryable(&raw, &DEFAULT_RETRY_STATUSES);
        }
    }

    proptest! {
        // The rows that need a key and a code are a few percent of the
        // inputs: more cases, so that every row is reached on every run.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn kind_and_code_follow_the_status_table(
            status in status(),
            keyed in prop::bool::weighted(0.7),
            header_code in proptest::option::of(table_code()),
            nested_code in proptest::option::of(table_code()),
            top_code in proptest::option::of(table_code()),
            problem_type in proptest::option::of(table_problem_type()),
            problem_json in any::<bool>(),
            remaining in proptest::option::of(0u64..3),
        ) {
            let mut headers = HeaderMap::new();
            // Only what can be a header value is sent as one.
            let header = header_code.as_deref().and_then(|c| HeaderValue::from_str(c).ok());
            let header_code = header_code.filter(|_| header.is_some());
            if let Some(value) = header {
                headers.insert("x-error-code", value);
            }
            if let Some(n) = remaining {
                headers.insert("x-ratelimit-remaining", HeaderValue::from(n));
            }
            let media = if problem_json { PROBLEM_JSON } else { "application/json" };
            headers.insert("content-type", HeaderValue::from_static(media));
            let mut body = serde_json::Map::new();
            if let Some(t) = &problem_type {
                body.insert("type".to_owned(), json!(t));
            }
            if let Some(c) = &nested_code {
                body.insert("error".to_owned(), json!({ "code": c }));
            }
            if let Some(c) = &top_code {
                body.insert("code".to_owned(), json!(c));
            }
            let mut sent = Sent::new(Method::POST);
            if keyed {
                sent = sent.with_idempotency_key("key-1");
            }
            let body = Value::Object(body).to_string();
            let e = Error::from_response(&parts(status, headers), body.as_bytes(), false, sent);

            // The server's code: the first valid one of `x-error-code`, the
            // body's nested code and its top-level code.
            let valid = |c: Option<String>| c.filter(|c| is_valid_request_id(c.as_bytes()));
            let server_code = valid(header_code)
                .or_else(|| valid(nested_code))
                .or_else(|| valid(top_code));
            let problem_type = problem_type.filter(|_| problem_json);
            let (kind, default) = table(
                status,
                keyed,
                server_code.as_deref(),
                problem_type.as_deref(),
                remaining == Some(0),
            );
            prop_assert_eq!(e.kind(), kind, "{:?}", e);
            prop_assert_eq!(e.code(), server_code.as_deref().unwrap_or(default));
        }
    }

    proptest! {
        #[test]
        fn message_is_the_bodys_text_on_one_line(
            status in status(),
            message in text(),
            shape in 0usize..4,
            truncated in prop::bool::weighted(0.25),
        ) {
            let body = match shape {
                0 => json!({ "error": { "message": message } }).to_string(),
                1 => json!({ "message": message }).to_string(),
                2 => json!({ "error": message }).to_string(),
                // Never JSON: a body that starts with `<` is text.
                _ => format!("<{message}"),
            };
            let parts = parts(status, HeaderMap::new());
            let e = Error::from_response(&parts, body.as_bytes(), truncated, Sent::default());
            let text = if truncated || shape == 3 { body.clone() } else { message };
            let line = one_line(&text);
            let want = if line.is_empty() { reason(status) } else { line };
            prop_assert_eq!(e.message(), want.as_str(), "body {:?}", body);
            if truncated {
                let text = e.body().as_text();
                prop_assert_eq!(text, Some(body.as_str()), "a truncated body is text");
            }
        }

        #[test]
        fn problem_details_come_only_from_problem_json(
            status in status(),
            content_type in select(&[
                "application/problem+json", "Application/Problem+JSON; charset=utf-8",
                " application/problem+json ;q=1", "application/json", "application/problem+jsonx",
                "text/problem+json",
            ][..]),
            kind in proptest::option::of(text()),
            title in proptest::option::of(member(json!(7))),
            detail in proptest::option::of(member(json!(null))),
            claimed in any::<u16>(),
            truncated in prop::bool::weighted(0.2),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("status".to_owned(), json!(claimed));
            if let Some(k) = &kind {
                object.insert("type".to_owned(), json!(k));
            }
            if let Some(t) = &title {
                object.insert("title".to_owned(), t.clone());
            }
            if let Some(d) = &detail {
                object.insert("detail".to_owned(), d.clone());
            }
            let body = Value::Object(object).to_string();
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static(content_type));
            let parts = parts(status, headers);
            let e = Error::from_response(&parts, body.as_bytes(), truncated, Sent::default());

            let media = content_type.split(';').next().unwrap_or_default().trim();
            let is_problem = media.eq_ignore_ascii_case(PROBLEM_JSON) && !truncated;
            prop_assert_eq!(e.problem().is_some(), is_problem, "{:?}", content_type);
            let string = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_owned);
            if let Some(p) = e.problem() {
                prop_assert_eq!(p.status, status, "the body's status never wins");
                prop_assert_eq!(&p.r#type, kind.as_deref().unwrap_or("about:blank"));
                prop_assert_eq!(&p.title, &string(&title));
                prop_assert_eq!(&p.detail, &string(&detail));
                prop_assert!(p.extensions.is_empty(), "{:?}", p.extensions);
                // The message: detail, else title, else the reason phrase.
                let text = string(&detail).or_else(|| string(&title)).map(|t| one_line(&t));
                let want = text.filter(|t| !t.is_empty()).unwrap_or_else(|| reason(status));
                prop_assert_eq!(e.message(), want.as_str());
            } else if !truncated {
                // Without a problem, a title is no message; a detail still is.
                let text = string(&detail).map(|t| one_line(&t));
                let want = text.filter(|t| !t.is_empty()).unwrap_or_else(|| reason(status));
                prop_assert_eq!(e.message(), want.as_str());
            }
        }

        #[test]
        fn the_hint_is_the_retry_after_headers(
            status in status(),
            retry_after in proptest::option::of(seconds_or_junk()),
            retry_after_ms in proptest::option::of(seconds_or_junk()),
        ) {
            let mut headers = HeaderMap::new();
            let value = |v: &str| HeaderValue::from_str(v).expect("invariant: printable ASCII");
            if let Some(v) = &retry_after {
                headers.insert("retry-after", value(v));
            }
            if let Some(v) = &retry_after_ms {
                headers.insert("retry-after-ms", value(v));
            }
            // No dates and no rate-limit headers: the clock does not matter.
            let want = retry_after::from_headers_at(&headers, UNIX_EPOCH);
            let e = Error::from_response(&parts(status, headers), b"", false, Sent::default());
            prop_assert_eq!(e.retry_after(), want);
        }
    }
}

mod ids {
    //! Request ids and idempotency keys (`fuzz/fuzz_targets/ids.rs`):
    //! `is_valid_request_id` is exactly "1 to 128 bytes, each `!` to `~`";
    //! `Sent` keeps an id (and a key: 1 to 1,024 of the same bytes) exactly
    //! when it is valid, whether set by the builder or read from headers,
    //! and a key makes any request replay-safe; a response's echo of the id
    //! is reported on the same terms, else the id sent.

    use super::*;

    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use kneo_core::{is_valid_request_id, Sent, IDEMPOTENCY_KEY, X_REQUEST_ID};

    fn visible(bytes: &[u8]) -> bool {
        bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    }

    fn reference_id(bytes: &[u8]) -> bool {
        (1..=128).contains(&bytes.len()) && visible(bytes)
    }

    fn reference_key(bytes: &[u8]) -> bool {
        (1..=1024).contains(&bytes.len()) && visible(bytes)
    }

    /// Visible ASCII of `len` bytes.
    fn visible_run(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0x7e, len)
    }

    /// Candidate ids and keys: around both length limits, with one bad byte
    /// (space, control, DEL, non-ASCII) slipped in, or anything.
    fn candidate() -> impl Strategy<Value = Vec<u8>> {
        let bad = prop_oneof![
            select(&[b' ', b'\t', b'\0', b'\n', 0x7f, 0x80, 0xc3, 0xff][..]),
            any::<u8>(),
        ];
        prop_oneof![
            visible_run(0..=8),
            visible_run(124..=132),
            visible_run(1020..=1028),
            (visible_run(1..=130), any::<prop::sample::Index>(), bad).prop_map(|(mut v, at, b)| {
                v.insert(at.index(v.len() + 1), b);
                v
            }),
            any_bytes(140),
            "\\PC{1,12}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn a_valid_id_is_1_to_128_visible_ascii_bytes(data in candidate()) {
            prop_assert_eq!(is_valid_request_id(&data), reference_id(&data), "{:?}", data);
        }

        #[test]
        fn sent_keeps_an_id_and_a_key_exactly_when_valid(data in candidate(), method in 0usize..3) {
            let text = String::from_utf8_lossy(&data).into_owned();
            let method = [Method::POST, Method::PATCH, Method::GET][method].clone();
            let idempotent = method == Method::GET;
            let sent = Sent::new(method).with_request_id(text.clone());
            let id_ok = reference_id(text.as_bytes());
            prop_assert_eq!(sent.request_id(), id_ok.then_some(text.as_str()));
            let sent = sent.with_idempotency_key(text.clone());
            let key_ok = reference_key(text.as_bytes());
            prop_assert_eq!(sent.idempotency_key(), key_ok.then_some(text.as_str()));
            prop_assert_eq!(sent.is_replay_safe(), key_ok || idempotent);
        }

        #[test]
        fn headers_and_echoes_are_kept_on_the_same_terms(data in candidate()) {
            // Only what can be a header value reaches a header map.
            let Ok(value) = HeaderValue::from_bytes(&data) else {
                return Ok(());
            };
            let mut headers = HeaderMap::new();
            headers.insert(X_REQUEST_ID, value.clone());
            headers.insert(IDEMPOTENCY_KEY, value.clone());
            let sent = Sent::from_headers(&Method::GET, &headers, &X_REQUEST_ID);
            let as_text = std::str::from_utf8(&data).ok();
            prop_assert_eq!(sent.request_id(), as_text.filter(|_| reference_id(&data)));
            prop_assert_eq!(sent.idempotency_key(), as_text.filter(|_| reference_key(&data)));

            let echo = Sent::new(Method::GET)
                .with_request_id("sent-1")
                .with_request_id_header(HeaderName::from_static("request-id"));
            let mut response = HeaderMap::new();
            response.insert("request-id", value.clone());
            // An echo in another header is not this request's.
            response.insert(X_REQUEST_ID, HeaderValue::from_static("other-header"));
            let want = as_text.filter(|_| reference_id(&data)).unwrap_or("sent-1");
            let reported = echo.reported_request_id(&response);
            prop_assert_eq!(reported.as_deref(), Some(want));
        }
    }
}
