//! Rate-limit headers, parsed once into a typed [`RateLimit`].
//!
//! Servers say how much quota is left on successful responses as well as on
//! the 429. [`from_headers`] reads every header family seen in the wild into
//! one value: what is left ([`remaining`](RateLimit::remaining)), out of how
//! much ([`limit`](RateLimit::limit)), how long until it resets
//! ([`reset_after`](RateLimit::reset_after)) and, when the server names it,
//! which policy or partition it is ([`policy`](RateLimit::policy)).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::HeaderMap;
//! use kneo_core::rate_limit;
//!
//! // The IETF draft's fields, with two policies: the daily one is the
//! // nearer to exhaustion (10% left, against 50% for the burst one).
//! let mut headers = HeaderMap::new();
//! headers.insert(
//!     "ratelimit-policy",
//!     r#""burst";q=100;w=60, "daily";q=1000;w=86400"#.parse().unwrap(),
//! );
//! headers.insert("ratelimit", r#""burst";r=50;t=30, "daily";r=100;t=3600"#.parse().unwrap());
//! let rl = rate_limit::from_headers(&headers).expect("the IETF fields parse");
//! assert_eq!(rl.policy(), Some("daily"));
//! assert_eq!((rl.remaining(), rl.limit()), (Some(100), Some(1000)));
//! assert_eq!(rl.reset_after(), Some(Duration::from_secs(3600)));
//! assert!(!rl.is_exhausted());
//!
//! // OpenAI's headers: the token budget is the one that ran out.
//! let mut headers = HeaderMap::new();
//! headers.insert("x-ratelimit-limit-requests", "60".parse().unwrap());
//! headers.insert("x-ratelimit-remaining-requests", "59".parse().unwrap());
//! headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
//! headers.insert("x-ratelimit-limit-tokens", "150000".parse().unwrap());
//! headers.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
//! headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
//! let rl = rate_limit::from_headers_at(&headers, SystemTime::now()).expect("OpenAI's headers parse");
//! assert_eq!(rl.policy(), Some("tokens"));
//! assert!(rl.is_exhausted());
//! assert_eq!(rl.reset_after(), Some(Duration::from_secs(360)));
//!
//! // A garbage value is never trusted: it is as if it were absent.
//! let mut headers = HeaderMap::new();
//! headers.insert("x-ratelimit-remaining", "-1".parse().unwrap());
//! assert_eq!(rate_limit::from_headers(&headers), None);
//! ```
//!
//! # Families understood
//!
//! | family | headers | reset is |
//! | --- | --- | --- |
//! | IETF draft, current ([draft-ietf-httpapi-ratelimit-headers-10]) | `RateLimit: "burst";r=50;t=30` and `RateLimit-Policy: "burst";q=100;w=60` (Structured Field Lists) | `t`, seconds |
//! | IETF draft-07 | `RateLimit: limit=100, remaining=50, reset=30` (a Structured Field Dictionary) | seconds, or epoch seconds (see below) |
//! | IETF draft-06 and earlier | `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` | seconds, or epoch seconds |
//! | GitHub, and the same names that others send | `x-ratelimit-limit`, `-remaining`, `-reset`; GitHub adds `x-ratelimit-used` and `x-ratelimit-resource` | GitHub: epoch seconds; others: seconds, or epoch seconds |
//! | OpenAI | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` | a Go duration: `12ms`, `1s`, `6m0s`, `1h2m3.5s` |
//! | Anthropic | `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}` | an RFC 3339 time: `2025-08-21T12:40:59Z` |
//!
//! In the current IETF form each `RateLimit` item names its policy, and the
//! limit is the `q` of the `RateLimit-Policy` item with the same name (absent
//! when none matches). `RateLimit-Policy` alone says nothing about what is
//! left, so on its own it gives no value.
//!
//! The [`policy`](RateLimit::policy) is the IETF policy name, GitHub's
//! `x-ratelimit-resource` (`core`, `search`, ...), or for OpenAI and Anthropic
//! which budget was reported: `requests`, `tokens`, `input-tokens`,
//! `output-tokens`. The other families have none.
//!
//! ## Seconds or epoch seconds
//!
//! The drafts define reset as seconds from now; GitHub (and GitLab in
//! `RateLimit-Reset`) send a Unix time instead. The headers are the same, so:
//!
//! - when `x-ratelimit-used` or `x-ratelimit-resource` is present (whatever its
//!   value), the `x-ratelimit-*` headers are GitHub's and reset is epoch
//!   seconds, UTC;
//! - otherwise, in every older form (`RateLimit: reset=`, `RateLimit-Reset`,
//!   `x-ratelimit-reset`), a value of at least [`EPOCH_THRESHOLD_SECS`]
//!   (`1_000_000_000`, September 2001; as a delay it would be 31 years) is
//!   epoch seconds and a smaller one is seconds from now.
//!
//! The current form's `t` is always seconds from now, as the draft requires.
//!
//! # Which one is reported
//!
//! Families are tried in this order, and the first that gives a value wins:
//! IETF current, IETF draft-07, IETF draft-06, `x-ratelimit-*` (GitHub and
//! others), OpenAI, Anthropic. A response with two families almost always
//! states one quota twice (a gateway adding the standard fields, say), and the
//! standard form is preferred to the vendor one.
//!
//! Within a family that reports several limits at once (IETF policies, OpenAI
//! and Anthropic budgets), the one nearest exhaustion is reported:
//!
//! 1. one with nothing left (`remaining` is 0) beats one with something left;
//!    between two with nothing left, the later reset wins, since a request has
//!    to wait for both;
//! 2. otherwise the lower `remaining / limit` ratio wins, when both limits are
//!    known and non-zero; else the lower `remaining`; a known `remaining` beats
//!    an unknown one;
//! 3. a tie keeps the first in header order (`requests` before `tokens`).
//!
//! `Retry-After` is not read here: when a response has both, `Retry-After`
//! takes precedence ([`retry_after`](crate::retry_after)), as the draft says.
//!
//! # Malformed fields
//!
//! A malformed field is ignored, as the draft requires; it is never an error
//! and never a panic. Negative numbers, wrong types (`1.5` for a count, a
//! string for `r`), text, bad dates, bytes that are not ASCII, numbers that do
//! not fit a `u64`: each makes that field, or that Structured Field item or
//! parameter, absent. A Structured Field value that does not parse as
//! [RFC 9651] says is ignored whole; an item without its required parameter
//! (`r`, `q`) is ignored; an optional parameter of the wrong type (`t=1.5`) is
//! as if it were absent. Field lines of a Structured Field are combined, as
//! RFC 9651 says; any other header sent more than once with different values
//! is ignored (identical repeats are fine). A family whose every field is
//! malformed gives nothing, and the next family is tried.
//!
//! Servers lie: `remaining` may be above `limit`. Both are reported as given.
//!
//! A time to reset saturates at [`MAX_RESET_AFTER`]; a reset in the past is
//! zero. An epoch or RFC 3339 time that a [`SystemTime`] cannot hold is
//! ignored.
//!
//! Documented leniencies: IETF policy names may be Tokens as well as Strings;
//! `x-ratelimit-reset` may have a decimal fraction; OpenAI's reset may be a
//! plain number of seconds (Azure OpenAI sends those); RFC 3339 times may have
//! any numeric offset (`+05:30`) as well as `Z`.
//!
//! Not understood (yet): OpenAI's `*-tokens_usage_based` headers, Anthropic's
//! `anthropic-ratelimit-unified-*` and `anthropic-priority-*` headers, and
//! other vendors' spellings (`x-rate-limit-*`).
//!
//! [draft-ietf-httpapi-ratelimit-headers-10]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/10/
//! [RFC 9651]: https://www.rfc-editor.org/rfc/rfc9651

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName};

use crate::retry_after::parse_decimal;

mod structured;

use structured::{parse_dictionary, parse_list, Bare, Member};

/// The IETF draft's `RateLimit` field.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The IETF draft's `RateLimit-Policy` field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The longest time to reset ever reported: 366 days.
///
/// Yearly quotas are the longest seen in practice; anything further out is
/// either garbage or too far away to wait for, and saturates here.
pub const MAX_RESET_AFTER: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// A reset value at least this large, in the older forms, is epoch seconds.
///
/// One billion seconds after the Unix epoch is September 2001; as a delay it
/// would be 31 years. See the [module docs](self#seconds-or-epoch-seconds).
pub const EPOCH_THRESHOLD_SECS: u64 = 1_000_000_000;

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_RATELIMIT_USED: HeaderName = HeaderName::from_static("x-ratelimit-used");
const X_RATELIMIT_RESOURCE: HeaderName = HeaderName::from_static("x-ratelimit-resource");

/// One budget of a vendor family: its name and its three headers.
struct Budget {
    policy: &'static str,
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

const OPENAI: [Budget; 2] = [
    Budget {
        policy: "requests",
        limit: HeaderName::from_static("x-ratelimit-limit-requests"),
        remaining: HeaderName::from_static("x-ratelimit-remaining-requests"),
        reset: HeaderName::from_static("x-ratelimit-reset-requests"),
    },
    Budget {
        policy: "tokens",
        limit: HeaderName::from_static("x-ratelimit-limit-tokens"),
        remaining: HeaderName::from_static("x-ratelimit-remaining-tokens"),
        reset: HeaderName::from_static("x-ratelimit-reset-tokens"),
    },
];

const ANTHROPIC: [Budget; 4] = [
    Budget {
        policy: "requests",
        limit: HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        remaining: HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        reset: HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    },
    Budget {
        policy: "tokens",
        limit: HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        remaining: HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        reset: HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    },
    Budget {
        policy: "input-tokens",
        limit: HeaderName::from_static("anthropic-ratelimit-input-tokens-limit"),
        remaining: HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining"),
        reset: HeaderName::from_static("anthropic-ratelimit-input-tokens-reset"),
    },
    Budget {
        policy: "output-tokens",
        limit: HeaderName::from_static("anthropic-ratelimit-output-tokens-limit"),
        remaining: HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining"),
        reset: HeaderName::from_static("anthropic-ratelimit-output-tokens-reset"),
    },
];

/// What a response's rate-limit headers said: one limit, the one that binds.
///
/// Built by [`from_headers`]; see the [module docs](self) for the families
/// understood and which limit is reported when there are several.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_after: Option<Duration>,
    policy: Option<String>,
}

impl RateLimit {
    /// `None` when the fields said nothing (a policy name alone is nothing).
    fn new(
        limit: Option<u64>,
        remaining: Option<u64>,
        reset_after: Option<Duration>,
        policy: Option<String>,
    ) -> Option<Self> {
        if limit.is_none() && remaining.is_none() && reset_after.is_none() {
            return None;
        }
        Some(RateLimit {
            limit,
            remaining,
            reset_after,
            policy,
        })
    }

    /// Quota units left in the current window, as the server sent them.
    pub fn remaining(&self) -> Option<u64> {
        self.remaining
    }

    /// Quota units the window allows, as the server sent them.
    ///
    /// Not checked against [`remaining`](Self::remaining): servers send
    /// `remaining` above `limit`, and both are reported as given.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Time from the parse (`now`) until the quota resets.
    ///
    /// Zero when the reset is in the past; never more than
    /// [`MAX_RESET_AFTER`].
    pub fn reset_after(&self) -> Option<Duration> {
        self.reset_after
    }

    /// The policy or partition the value describes, when the server names it.
    ///
    /// The IETF policy name (`"burst"`), GitHub's `x-ratelimit-resource`
    /// (`"core"`), or for OpenAI and Anthropic the budget reported:
    /// `"requests"`, `"tokens"`, `"input-tokens"` or `"output-tokens"`.
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// True when the server said nothing is left (`remaining` is 0).
    pub fn is_exhausted(&self) -> bool {
        self.remaining == Some(0)
    }

    /// True when `self` is nearer exhaustion than `other` (module docs, rules 1–2).
    fn nearer_exhaustion_than(&self, other: &RateLimit) -> bool {
        match (self.is_exhausted(), other.is_exhausted()) {
            (true, false) => return true,
            (false, true) => return false,
            (true, true) => {
                return self.reset_after.unwrap_or(Duration::ZERO)
                    > other.reset_after.unwrap_or(Duration::ZERO)
            }
            (false, false) => {}
        }
        match (self.remaining, other.remaining) {
            (Some(a), Some(b)) => match (self.limit, other.limit) {
                (Some(la), Some(lb)) if la > 0 && lb > 0 => {
                    // a / la < b / lb, without division or overflow.
                    u128::from(a) * u128::from(lb) < u128::from(b) * u128::from(la)
                }
                _ => a < b,
            },
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The rate limit that `headers` describe, measured against the system clock.
///
/// `None` when no family understood is present, or all of its fields are
/// malformed. See the [module docs](self).
pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
    from_headers_at(headers, SystemTime::now())
}

/// The rate limit that `headers` describe, with absolute reset times (epoch
/// seconds, RFC 3339) measured against `now`.
pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Option<RateLimit> {
    // One pass over the names first: most responses carry none of these
    // headers, and they should cost no hash lookups.
    let (mut ietf, mut x, mut anthropic) = (false, false, false);
    for name in headers.keys() {
        let name = name.as_str();
        ietf |= name.starts_with("ratelimit");
        x |= name.starts_with("x-ratelimit-");
        anthropic |= name.starts_with("anthropic-ratelimit-");
    }
    let ietf_family = || {
        ietf_current(headers)
            .or_else(|| ietf_dictionary(headers, now))
            .or_else(|| ietf_separate(headers, now))
    };
    ietf.then(ietf_family)
        .flatten()
        .or_else(|| x.then(|| x_ratelimit(headers, now)).flatten())
        .or_else(|| x.then(|| openai(headers)).flatten())
        .or_else(|| anthropic.then(|| anthropic_family(headers, now)).flatten())
}

/// `RateLimit: "burst";r=50;t=30` with `RateLimit-Policy: "burst";q=100`.
fn ietf_current(headers: &HeaderMap) -> Option<RateLimit> {
    let members = parse_list(&combined(headers, &RATELIMIT)?)?;
    let quotas: Vec<(String, u64)> = combined(headers, &RATELIMIT_POLICY)
        .and_then(|field| parse_list(&field))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|member| match member {
            Member::Item(item) => {
                let q = item.param("q").and_then(non_negative)?;
                match item.bare {
                    Bare::Name(name) => Some((name, q)),
                    _ => None,
                }
            }
            Member::InnerList => None,
        })
        .collect();
    nearest(members.iter().filter_map(|member| {
        let Member::Item(item) = member else {
            return None;
        };
        let Bare::Name(name) = &item.bare else {
            return None;
        };
        let remaining = item.param("r").and_then(non_negative)?;
        let reset_after = item
            .param("t")
            .and_then(non_negative)
            .map(|t| cap(Duration::from_secs(t)));
        let limit = quotas.iter().find(|(n, _)| n == name).map(|(_, q)| *q);
        RateLimit::new(limit, Some(remaining), reset_after, Some(name.clone()))
    }))
}

/// Draft-07: `RateLimit: limit=100, remaining=50, reset=30`.
fn ietf_dictionary(headers: &HeaderMap, now: SystemTime) -> Option<RateLimit> {
    let dict = parse_dictionary(&combined(headers, &RATELIMIT)?)?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, member)| match member {
                Member::Item(item) => non_negative(&item.bare),
                Member::InnerList => None,
            })
    };
    let reset_after = get("reset").and_then(|s| reset_in(Duration::from_secs(s), false, now));
    RateLimit::new(get("limit"), get("remaining"), reset_after, None)
}

/// Draft-06 and earlier: `RateLimit-Limit`, `RateLimit-Remaining`,
/// `RateLimit-Reset`, each a Structured Field Integer. `RateLimit-Limit` was a
/// List in the first drafts (`10, 10;w=1`): its first member is the limit.
fn ietf_separate(headers: &HeaderMap, now: SystemTime) -> Option<RateLimit> {
    let integer = |name: &HeaderName, only: bool| {
        let members = parse_list(single(headers, name)?)?;
        if only && members.len() != 1 {
            return None;
        }
        match members.first()? {
            Member::Item(item) => non_negative(&item.bare),
            Member::InnerList => None,
        }
    };
    let reset_after =
        integer(&RATELIMIT_RESET, true).and_then(|s| reset_in(Duration::from_secs(s), false, now));
    RateLimit::new(
        integer(&RATELIMIT_LIMIT, false),
        integer(&RATELIMIT_REMAINING, true),
        reset_after,
        None,
    )
}

/// `x-ratelimit-limit`, `-remaining`, `-reset`, and GitHub's `-used` and
/// `-resource`.
fn x_ratelimit(headers: &HeaderMap, now: SystemTime) -> Option<RateLimit> {
    let github =
        headers.contains_key(&X_RATELIMIT_USED) || headers.contains_key(&X_RATELIMIT_RESOURCE);
    let limit = single(headers, &X_RATELIMIT_LIMIT).and_then(count);
    let remaining = single(headers, &X_RATELIMIT_REMAINING)
        .and_then(count)
        .or_else(|| {
            // GitHub sends both, but `used` is enough when `remaining` is bad.
            let used = single(headers, &X_RATELIMIT_USED).and_then(count)?;
            limit?.checked_sub(used)
        });
    let reset_after = single(headers, &X_RATELIMIT_RESET)
        .and_then(seconds)
        .and_then(|d| reset_in(d, github, now));
    let policy = single(headers, &X_RATELIMIT_RESOURCE).and_then(resource_name);
    RateLimit::new(limit, remaining, reset_after, policy)
}

/// OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
fn openai(headers: &HeaderMap) -> Option<RateLimit> {
    nearest(OPENAI.iter().filter_map(|budget| {
        RateLimit::new(
            single(headers, &budget.limit).and_then(count),
            single(headers, &budget.remaining).and_then(count),
            single(headers, &budget.reset)
                .and_then(go_duration)
                .map(cap),
            Some(budget.policy.to_owned()),
        )
    }))
}

/// Anthropic: `anthropic-ratelimit-{requests,tokens,...}-{limit,remaining,reset}`.
fn anthropic_family(headers: &HeaderMap, now: SystemTime) -> Option<RateLimit> {
    nearest(ANTHROPIC.iter().filter_map(|budget| {
        RateLimit::new(
            single(headers, &budget.limit).and_then(count),
            single(headers, &budget.remaining).and_then(count),
            single(headers, &budget.reset)
                .and_then(rfc3339)
                .map(|at| until(at, now)),
            Some(budget.policy.to_owned()),
        )
    }))
}

/// The candidate nearest exhaustion; ties keep the first.
fn nearest(candidates: impl Iterator<Item = RateLimit>) -> Option<RateLimit> {
    candidates.reduce(|best, next| {
        if next.nearer_exhaustion_than(&best) {
            next
        } else {
            best
        }
    })
}

/// Every line of a Structured Field, combined with `", "` (RFC 9651 §4.2).
/// Empty lines are skipped.
fn combined<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, [u8]>> {
    let mut lines = headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty());
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut out = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        out.extend_from_slice(b", ");
        out.extend_from_slice(line);
    }
    Some(Cow::Owned(out))
}

/// The value of a single-valued header; `None` if absent, or repeated with
/// different values.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h [u8]> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.all(|v| v == first).then(|| first.as_bytes())
}

/// A Structured Field Integer that is not negative.
fn non_negative(bare: &Bare) -> Option<u64> {
    match bare {
        Bare::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// The header value as trimmed text; `None` for bytes that are not UTF-8.
fn text(value: &[u8]) -> Option<&str> {
    Some(std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']))
}

/// A count: ASCII digits only, fitting a `u64`.
fn count(value: &[u8]) -> Option<u64> {
    let text = text(value)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Seconds as `digits[.digits]`, saturating.
fn seconds(value: &[u8]) -> Option<Duration> {
    parse_decimal(text(value)?, 1_000_000_000)
}

/// GitHub's resource name: 1 to 64 of `[A-Za-z0-9_.-]`.
fn resource_name(value: &[u8]) -> Option<String> {
    let text = text(value)?;
    let ok = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then(|| text.to_owned())
}

/// An older-form reset: seconds from now, or epoch seconds when `epoch` or
/// when it is at least [`EPOCH_THRESHOLD_SECS`].
fn reset_in(value: Duration, epoch: bool, now: SystemTime) -> Option<Duration> {
    if epoch || value.as_secs() >= EPOCH_THRESHOLD_SECS {
        Some(until(UNIX_EPOCH.checked_add(value)?, now))
    } else {
        Some(cap(value))
    }
}

/// Time from `now` until `at`: zero if `at` is past, capped.
fn until(at: SystemTime, now: SystemTime) -> Duration {
    cap(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn cap(d: Duration) -> Duration {
    d.min(MAX_RESET_AFTER)
}

/// A Go `time.Duration` as its `String()` method writes it: `0`, `12ms`,
/// `1.5µs`, `6m0s`, `1h2m3.5s`; or (Azure OpenAI) plain seconds, `20`.
///
/// Each number is `digits[.digits]`; units are `ns`, `us`/`µs`/`μs`, `ms`,
/// `s`, `m`, `h`. Signs are refused (a negative reset is garbage); the total
/// saturates.
fn go_duration(value: &[u8]) -> Option<Duration> {
    const UNITS: [(&str, u64); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("\u{b5}s", 1_000),
        ("\u{3bc}s", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let mut rest = text(value)?;
    if let Some(d) = parse_decimal(rest, 1_000_000_000) {
        return Some(d);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        // `digits` counts ASCII bytes from the start: a char boundary.
        let (number, tail) = rest.split_at(digits);
        let (nanos_per_unit, after) = UNITS
            .iter()
            .find_map(|(unit, nanos)| tail.strip_prefix(*unit).map(|after| (*nanos, after)))?;
        total = total.saturating_add(parse_decimal(number, nanos_per_unit)?);
        rest = after;
    }
    Some(total)
}

/// An RFC 3339 date-time: `humantime`'s parser, which takes only UTC (`Z` or
/// `+00:00`), plus any other numeric offset.
fn rfc3339(value: &[u8]) -> Option<SystemTime> {
    let text = text(value)?;
    if let Ok(at) = humantime::parse_rfc3339(text) {
        return Some(at);
    }
    // `...±hh:mm`: six ASCII bytes at the end, so `split_at` is on a boundary.
    let cut = text.len().checked_sub(6)?;
    let (base, offset) = (text.get(..cut)?, text.get(cut..)?.as_bytes());
    let &[sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] = offset else {
        return None;
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| u64::from(b - b'0'));
    let hours = digit(h1)? * 10 + digit(h2)?;
    let minutes = digit(m1)? * 10 + digit(m2)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
    let offset = Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset, so UTC = local - offset.
    if sign == b'+' {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases: &[(&[u8], Option<Duration>)] = &[
            (b"0", Some(s(0))),
            (b"0s", Some(s(0))),
            (b"12ms", Some(ms(12))),
            (b"20ms", Some(ms(20))),
            (b"1s", Some(s(1))),
            (b"6m0s", Some(s(360))),
            (b"1h2m3.5s", Some(ms(3_723_500))),
            (b"1.5ms", Some(Duration::from_micros(1500))),
            (b"7us", Some(Duration::from_micros(7))),
            ("7\u{b5}s".as_bytes(), Some(Duration::from_micros(7))),
            ("7\u{3bc}s".as_bytes(), Some(Duration::from_micros(7))),
            (b"9ns", Some(Duration::from_nanos(9))),
            (b"1s1h", Some(s(3601))),
            (b" 2s ", Some(s(2))),
            // Azure OpenAI: plain seconds
            (b"20", Some(s(20))),
            (b"1.25", Some(ms(1250))),
            // saturates
            (b"99999999999999999999999h", Some(Duration::MAX)),
            // garbage
            (b"", None),
            (b"s", None),
            (b"-1s", None),
            (b"+1s", None),
            (b"1", Some(s(1))),
            (b"1 s", None),
            (b"1d", None),
            (b"1min", None),
            (b"1sx", None),
            (b".5s", None),
            (b"1.s", None),
            (b"1..5s", None),
            (b"1h-2m", None),
            (b"\xff", None),
            (b"1\xc2", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                go_duration(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rfc3339_times() {
        let at = |secs: u64| Some(UNIX_EPOCH + Duration::from_secs(secs));
        // 2025-08-21T12:40:59Z
        let base = 1_755_780_059;
        let cases: &[(&[u8], Option<SystemTime>)] = &[
            (b"2025-08-21T12:40:59Z", at(base)),
            (b"2025-08-21T12:40:59+00:00", at(base)),
            (b"2025-08-21T12:40:59-00:00", at(base)),
            (b"2025-08-21T18:10:59+05:30", at(base)),
            (b"2025-08-21T07:40:59-05:00", at(base)),
            (
                b"2025-08-21T12:40:59.5Z",
                Some(UNIX_EPOCH + Duration::from_millis(base * 1000 + 500)),
            ),
            (b"2025-08-21T12:40:59+24:00", None),
            (b"2025-08-21T12:40:59+05:60", None),
            (b"2025-08-21T12:40:59+0530", None),
            (b"2025-08-21T12:40:59", None),
            (b"2025-08-21 12:40:59Z", None),
            (b"2025-02-30T00:00:00Z", None),
            (b"1969-12-31T23:59:59Z", None),
            (b"tomorrow", None),
            (b"", None),
            ("2025-08-21T12:40:59\u{e9}00:00".as_bytes(), None),
            (
                "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}".as_bytes(),
                None,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                rfc3339(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn nearer_exhaustion_rules() {
        let rl = |limit, remaining, reset: Option<u64>| RateLimit {
            limit,
            remaining,
            reset_after: reset.map(Duration::from_secs),
            policy: None,
        };
        // exhausted beats not exhausted
        assert!(rl(Some(10), Some(0), None).nearer_exhaustion_than(&rl(Some(10), Some(1), None)));
        // between exhausted, the later reset
        assert!(rl(None, Some(0), Some(60)).nearer_exhaustion_than(&rl(None, Some(0), Some(1))));
        assert!(!rl(None, Some(0), None).nearer_exhaustion_than(&rl(None, Some(0), Some(1))));
        // the ratio, when both limits are known
        assert!(rl(Some(1000), Some(100), None).nearer_exhaustion_than(&rl(
            Some(100),
            Some(50),
            None
        )));
        // else the raw remaining
        assert!(rl(None, Some(50), None).nearer_exhaustion_than(&rl(Some(1000), Some(100), None)));
        assert!(rl(Some(0), Some(5), None).nearer_exhaustion_than(&rl(Some(10), Some(9), None)));
        // known beats unknown; a tie is not nearer
        assert!(rl(None, Some(u64::MAX), None).nearer_exhaustion_than(&rl(Some(1), None, None)));
        assert!(!rl(Some(10), Some(5), None).nearer_exhaustion_than(&rl(Some(10), Some(5), None)));
        assert!(!rl(Some(1), None, None).nearer_exhaustion_than(&rl(Some(1), None, None)));
        // huge values do not overflow
        assert!(
            rl(Some(u64::MAX), Some(1), None).nearer_exhaustion_than(&rl(
                Some(u64::MAX),
                Some(u64::MAX),
                None
            ))
        );
    }
}
