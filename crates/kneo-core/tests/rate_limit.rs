//! Parser tables for every rate-limit header family, malformed variants
//! included, and properties over arbitrary header values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use kneo_core::rate_limit::{self, RateLimit, EPOCH_THRESHOLD_SECS, MAX_RESET_AFTER};
use proptest::prelude::*;

/// 2025-08-21T12:40:00Z.
const NOW_SECS: u64 = 1_755_780_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// `NOW_SECS + delta` as text, for epoch-seconds headers.
fn epoch(delta: i64) -> String {
    NOW_SECS
        .checked_add_signed(delta)
        .expect("in range")
        .to_string()
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_bytes(value).expect("test header value"),
        );
    }
    map
}

type View = (Option<u64>, Option<u64>, Option<Duration>, Option<String>);

fn view(rl: &RateLimit) -> View {
    (
        rl.limit(),
        rl.remaining(),
        rl.reset_after(),
        rl.policy().map(str::to_owned),
    )
}

/// The expected value: (limit, remaining, reset_after in seconds, policy).
fn want(
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    policy: Option<&str>,
) -> Option<View> {
    Some((
        limit,
        remaining,
        reset.map(Duration::from_secs),
        policy.map(str::to_owned),
    ))
}

struct Case {
    name: &'static str,
    headers: Vec<(String, Vec<u8>)>,
    want: Option<View>,
}

fn case(name: &'static str, pairs: &[(&str, &[u8])], want: Option<View>) -> Case {
    Case {
        name,
        headers: pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
            .collect(),
        want,
    }
}

fn run(family: &str, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let pairs: Vec<(&str, &[u8])> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let got = rate_limit::from_headers_at(&headers(&pairs), now());
        if got.as_ref().map(view) != c.want {
            failures.push(format!(
                "{family} / {}: got {:?}, want {:?}",
                c.name,
                got.as_ref().map(view),
                c.want
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const MAX_SECS: u64 = 366 * 24 * 60 * 60;

#[test]
fn max_reset_after_is_366_days() {
    assert_eq!(MAX_RESET_AFTER, Duration::from_secs(MAX_SECS));
    assert_eq!(EPOCH_THRESHOLD_SECS, 1_000_000_000);
}

#[test]
fn ietf_current_table() {
    const POLICY: &str = "ratelimit-policy";
    const RL: &str = "ratelimit";
    let two_policies: &[u8] = br#""burst";q=100;w=60,"daily";q=1000;w=86400"#;
    let cases = [
        case(
            "one policy",
            &[
                (POLICY, br#""burst";q=100;w=60"#),
                (RL, br#""burst";r=50;t=30"#),
            ],
            want(Some(100), Some(50), Some(30), Some("burst")),
        ),
        case(
            "lower ratio wins",
            &[
                (POLICY, two_policies),
                (RL, br#""burst";r=50;t=30, "daily";r=100;t=3600"#),
            ],
            want(Some(1000), Some(100), Some(3600), Some("daily")),
        ),
        case(
            "nothing left wins",
            &[
                (POLICY, two_policies),
                (RL, br#""daily";r=900;t=80000, "burst";r=0;t=5"#),
            ],
            want(Some(100), Some(0), Some(5), Some("burst")),
        ),
        case(
            "two exhausted: the later reset",
            &[
                (POLICY, two_policies),
                (RL, br#""burst";r=0;t=5, "daily";r=0;t=80000"#),
            ],
            want(Some(1000), Some(0), Some(80000), Some("daily")),
        ),
        case(
            "no limits known: lower remaining",
            &[(RL, br#""a";r=7, "b";r=3"#)],
            want(None, Some(3), None, Some("b")),
        ),
        case(
            "equal: the first",
            &[
                (POLICY, two_policies),
                (RL, br#""burst";r=10, "daily";r=100"#),
            ],
            want(Some(100), Some(10), None, Some("burst")),
        ),
        case(
            "no policy field",
            &[(RL, br#""burst";r=50;t=30"#)],
            want(None, Some(50), Some(30), Some("burst")),
        ),
        case(
            "policy name not matched",
            &[(POLICY, br#""other";q=100"#), (RL, br#""burst";r=50"#)],
            want(None, Some(50), None, Some("burst")),
        ),
        case(
            "token names (lenient)",
            &[(POLICY, b"burst;q=100"), (RL, b"burst;r=1;t=2")],
            want(Some(100), Some(1), Some(2), Some("burst")),
        ),
        case(
            "split over two RateLimit lines",
            &[
                (POLICY, two_policies),
                (RL, br#""burst";r=90"#),
                (RL, br#""daily";r=10"#),
            ],
            want(Some(1000), Some(10), None, Some("daily")),
        ),
        case(
            "split over two RateLimit-Policy lines",
            &[
                (POLICY, br#""burst";q=100"#),
                (POLICY, br#""daily";q=1000"#),
                (RL, br#""daily";r=10"#),
            ],
            want(Some(1000), Some(10), None, Some("daily")),
        ),
        case(
            "empty line skipped",
            &[(RL, b""), (RL, br#""p";r=1"#)],
            want(None, Some(1), None, Some("p")),
        ),
        case(
            "partition key and unknown parameters ignored",
            &[
                (
                    POLICY,
                    br#""peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:"#,
                ),
                (RL, br#""peruser";r=300;t=60;pk=:QXBwLTk5OQ==:;acme-x=?1"#),
            ],
            want(Some(65535), Some(300), Some(60), Some("peruser")),
        ),
        case(
            "repeated parameter: the last",
            &[(RL, br#""p";r=1;r=2"#)],
            want(None, Some(2), None, Some("p")),
        ),
        case(
            "15 digits fit",
            &[
                (POLICY, br#""p";q=999999999999999"#),
                (RL, br#""p";r=999999999999999"#),
            ],
            want(
                Some(999_999_999_999_999),
                Some(999_999_999_999_999),
                None,
                Some("p"),
            ),
        ),
        case(
            "huge t saturates",
            &[(RL, br#""p";r=1;t=999999999999999"#)],
            want(None, Some(1), Some(MAX_SECS), Some("p")),
        ),
        case(
            "inner list and integer members skipped",
            &[(RL, br#"(1 2), 5;r=1, "p";r=3"#)],
            want(None, Some(3), None, Some("p")),
        ),
        case(
            "an item without r is skipped",
            &[(RL, br#""a";t=5, "b";r=4"#)],
            want(None, Some(4), None, Some("b")),
        ),
        // malformed
        case("negative r", &[(RL, br#""p";r=-1;t=30"#)], None),
        case("missing r", &[(RL, br#""p";t=30"#)], None),
        case("r is a string", &[(RL, br#""p";r="5""#)], None),
        case("r is a decimal", &[(RL, br#""p";r=1.0"#)], None),
        case("r is a boolean", &[(RL, br#""p";r"#)], None),
        case(
            "negative t: absent",
            &[(RL, br#""p";r=5;t=-1"#)],
            want(None, Some(5), None, Some("p")),
        ),
        case(
            "decimal t: absent",
            &[(RL, br#""p";r=5;t=1.5"#)],
            want(None, Some(5), None, Some("p")),
        ),
        case(
            "negative q: no limit",
            &[(POLICY, br#""p";q=-5"#), (RL, br#""p";r=5"#)],
            want(None, Some(5), None, Some("p")),
        ),
        case(
            "missing q: no limit",
            &[(POLICY, br#""p";w=60"#), (RL, br#""p";r=5"#)],
            want(None, Some(5), None, Some("p")),
        ),
        case(
            "malformed policy field: no limits",
            &[(POLICY, br#""p";q=100,"#), (RL, br#""p";r=5"#)],
            want(None, Some(5), None, Some("p")),
        ),
        case(
            "overflow: 16 digits",
            &[(RL, br#""p";r=1000000000000000"#)],
            None,
        ),
        case("trailing comma", &[(RL, br#""p";r=50,"#)], None),
        case("unterminated string", &[(RL, br#""p;r=50"#)], None),
        case("bad escape", &[(RL, b"\"p\\x\";r=50")], None),
        case("non-UTF-8 name", &[(RL, b"\"b\xffurst\";r=1")], None),
        case(
            "non-UTF-8 after the item",
            &[(RL, b"\"p\";r=1 \xc3\xa9")],
            None,
        ),
        case("uppercase parameter", &[(RL, br#""p";R=1"#)], None),
        case("empty", &[(RL, b"")], None),
        case("policy alone says nothing", &[(POLICY, two_policies)], None),
        case(
            "one bad line spoils the combined field",
            &[(RL, br#""p";r=1"#), (RL, br#""q";r="#)],
            None,
        ),
    ];
    run("IETF current", &cases);
}

#[test]
fn ietf_draft07_dictionary_table() {
    const RL: &str = "ratelimit";
    let soon = format!("limit=100, remaining=50, reset={}", epoch(60));
    let past = format!("remaining=0, reset={}", epoch(-60));
    let cases = [
        case(
            "all three",
            &[(RL, b"limit=100, remaining=50, reset=30")],
            want(Some(100), Some(50), Some(30), None),
        ),
        case(
            "no spaces, other order",
            &[(RL, b"reset=30,remaining=0,limit=10")],
            want(Some(10), Some(0), Some(30), None),
        ),
        case(
            "remaining only",
            &[(RL, b"remaining=0")],
            want(None, Some(0), None, None),
        ),
        case(
            "parameters ignored",
            &[(RL, b"limit=100;w=60, remaining=50;x=1, reset=30")],
            want(Some(100), Some(50), Some(30), None),
        ),
        case(
            "epoch reset",
            &[(RL, soon.as_bytes())],
            want(Some(100), Some(50), Some(60), None),
        ),
        case(
            "epoch reset in the past",
            &[(RL, past.as_bytes())],
            want(None, Some(0), Some(0), None),
        ),
        case(
            "repeated key: the last",
            &[(RL, b"remaining=5, remaining=3")],
            want(None, Some(3), None, None),
        ),
        case(
            "unknown keys ignored",
            &[(RL, b"limit=100, acme=1, remaining=5")],
            want(Some(100), Some(5), None, None),
        ),
        case(
            "huge reset saturates",
            &[(RL, b"remaining=1, reset=999999999")],
            want(None, Some(1), Some(MAX_SECS), None),
        ),
        // malformed
        case(
            "negative remaining: absent",
            &[(RL, b"limit=100, remaining=-1, reset=30")],
            want(Some(100), None, Some(30), None),
        ),
        case(
            "string limit: absent",
            &[(RL, br#"limit="100", remaining=5"#)],
            want(None, Some(5), None, None),
        ),
        case(
            "decimal reset: absent",
            &[(RL, b"remaining=5, reset=1.5")],
            want(None, Some(5), None, None),
        ),
        case(
            "inner list: absent",
            &[(RL, b"limit=(1 2), remaining=5")],
            want(None, Some(5), None, None),
        ),
        case(
            "every key malformed",
            &[(RL, b"limit=-1, remaining=?1, reset=x")],
            None,
        ),
        case("bare keys only", &[(RL, b"limit, remaining")], None),
        case("no commas", &[(RL, b"limit=100 remaining=50")], None),
        case("uppercase key", &[(RL, b"Limit=100")], None),
        case("overflow", &[(RL, b"remaining=1000000000000000")], None),
        case("non-UTF-8", &[(RL, b"remaining=5\xff")], None),
    ];
    run("IETF draft-07", &cases);
}

#[test]
fn ietf_draft06_separate_fields_table() {
    const L: &str = "ratelimit-limit";
    const R: &str = "ratelimit-remaining";
    const T: &str = "ratelimit-reset";
    let gitlab = epoch(120);
    let gone = epoch(-1);
    let cases = [
        case(
            "all three",
            &[(L, b"100"), (R, b"50"), (T, b"30")],
            want(Some(100), Some(50), Some(30), None),
        ),
        case(
            "list-form limit: the first member",
            &[(L, b"10, 10;w=1, 1000;w=3600"), (R, b"9")],
            want(Some(10), Some(9), None, None),
        ),
        case(
            "limit with parameters",
            &[(L, b"100;w=60")],
            want(Some(100), None, None, None),
        ),
        case(
            "reset only",
            &[(T, b" 7 ")],
            want(None, None, Some(7), None),
        ),
        case(
            "epoch reset (GitLab)",
            &[(L, b"60"), (R, b"0"), (T, gitlab.as_bytes())],
            want(Some(60), Some(0), Some(120), None),
        ),
        case(
            "epoch reset in the past",
            &[(T, gone.as_bytes())],
            want(None, None, Some(0), None),
        ),
        case(
            "just under the epoch threshold: seconds, saturated",
            &[(T, b"999999999")],
            want(None, None, Some(MAX_SECS), None),
        ),
        case(
            "identical repeats are fine",
            &[(R, b"5"), (R, b"5")],
            want(None, Some(5), None, None),
        ),
        case(
            "remaining > limit: both as given",
            &[(L, b"10"), (R, b"20")],
            want(Some(10), Some(20), None, None),
        ),
        // malformed
        case(
            "negative remaining",
            &[(L, b"100"), (R, b"-1")],
            want(Some(100), None, None, None),
        ),
        case("conflicting repeats", &[(R, b"5"), (R, b"6")], None),
        case("two members in remaining", &[(R, b"5, 6")], None),
        case("decimal reset", &[(T, b"1.5")], None),
        case("text", &[(R, b"lots")], None),
        case("overflow", &[(R, b"1000000000000000")], None),
        case("non-UTF-8", &[(R, b"\xff5")], None),
        case(
            "list-form limit starting with a string",
            &[(L, br#""x", 10"#)],
            None,
        ),
        case("empty", &[(R, b"")], None),
    ];
    run("IETF draft-06", &cases);
}

#[test]
fn github_and_x_ratelimit_table() {
    const L: &str = "x-ratelimit-limit";
    const R: &str = "x-ratelimit-remaining";
    const T: &str = "x-ratelimit-reset";
    const U: &str = "x-ratelimit-used";
    const RES: &str = "x-ratelimit-resource";
    let hour = epoch(3600);
    let past = epoch(-10);
    let soon = epoch(10);
    let cases = [
        case(
            "GitHub, all five",
            &[
                (L, b"5000"),
                (R, b"4999"),
                (U, b"1"),
                (T, hour.as_bytes()),
                (RES, b"core"),
            ],
            want(Some(5000), Some(4999), Some(3600), Some("core")),
        ),
        case(
            "GitHub's 403: nothing left",
            &[
                (L, b"60"),
                (R, b"0"),
                (U, b"60"),
                (T, soon.as_bytes()),
                (RES, b"core"),
            ],
            want(Some(60), Some(0), Some(10), Some("core")),
        ),
        case(
            "GitHub reset in the past",
            &[(L, b"60"), (R, b"3"), (U, b"57"), (T, past.as_bytes())],
            want(Some(60), Some(3), Some(0), None),
        ),
        case(
            "GitHub: a small reset is still epoch seconds",
            &[(R, b"3"), (RES, b"search"), (T, b"30")],
            want(None, Some(3), Some(0), Some("search")),
        ),
        case(
            "GitHub: remaining from limit - used",
            &[(L, b"60"), (U, b"60"), (RES, b"core")],
            want(Some(60), Some(0), None, Some("core")),
        ),
        case(
            "GitHub: remaining from used when remaining is bad",
            &[(L, b"60"), (R, b"x"), (U, b"20")],
            want(Some(60), Some(40), None, None),
        ),
        case(
            "GitHub: used above limit gives no remaining",
            &[(L, b"60"), (U, b"61")],
            want(Some(60), None, None, None),
        ),
        case(
            "others: reset in seconds",
            &[(L, b"100"), (R, b"50"), (T, b"30")],
            want(Some(100), Some(50), Some(30), None),
        ),
        case(
            "others: epoch reset",
            &[(R, b"1"), (T, soon.as_bytes())],
            want(None, Some(1), Some(10), None),
        ),
        case(
            "others: decimal seconds (lenient)",
            &[(T, b"1.5")],
            Some((None, None, Some(Duration::from_millis(1500)), None)),
        ),
        case(
            "others: huge seconds saturate",
            &[(T, b"999999999")],
            want(None, None, Some(MAX_SECS), None),
        ),
        case(
            "u64::MAX fits",
            &[(R, b"18446744073709551615")],
            want(None, Some(u64::MAX), None, None),
        ),
        case(
            "remaining > limit: both as given",
            &[(L, b"10"), (R, b"20")],
            want(Some(10), Some(20), None, None),
        ),
        case(
            "surrounding whitespace",
            &[(R, b"\t 42 ")],
            want(None, Some(42), None, None),
        ),
        // malformed
        case("negative remaining", &[(R, b"-1")], None),
        case("plus sign", &[(R, b"+1")], None),
        case("decimal remaining", &[(R, b"1.0")], None),
        case("overflow remaining", &[(R, b"18446744073709551616")], None),
        case("epoch overflow", &[(T, b"99999999999999999999999")], None),
        case("date reset", &[(T, b"Tue, 15 Nov 1994 08:12:31 GMT")], None),
        case("negative reset", &[(T, b"-30")], None),
        case(
            "bad resource name: no policy",
            &[(R, b"5"), (RES, b"co re")],
            want(None, Some(5), None, None),
        ),
        case(
            "non-UTF-8 resource name: no policy",
            &[(R, b"5"), (RES, b"c\xf6re")],
            want(None, Some(5), None, None),
        ),
        case("conflicting repeats", &[(R, b"5"), (R, b"4")], None),
        case("comma-joined repeats", &[(R, b"5, 5")], None),
        case("non-UTF-8", &[(R, b"5\xff")], None),
        case("empty", &[(R, b"")], None),
        case("used alone", &[(U, b"1")], None),
        case("resource alone", &[(RES, b"core")], None),
    ];
    run("GitHub / x-ratelimit", &cases);
}

#[test]
fn openai_table() {
    const LR: &str = "x-ratelimit-limit-requests";
    const RR: &str = "x-ratelimit-remaining-requests";
    const TR: &str = "x-ratelimit-reset-requests";
    const LT: &str = "x-ratelimit-limit-tokens";
    const RT: &str = "x-ratelimit-remaining-tokens";
    const TT: &str = "x-ratelimit-reset-tokens";
    let ms = |n| Some(Duration::from_millis(n));
    let cases = [
        case(
            "the docs' example: requests nearer (59/60 vs 149984/150000)",
            &[
                (LR, b"60"),
                (LT, b"150000"),
                (RR, b"59"),
                (RT, b"149984"),
                (TR, b"1s"),
                (TT, b"6m0s"),
            ],
            want(Some(60), Some(59), Some(1), Some("requests")),
        ),
        case(
            "tokens nearer",
            &[
                (LR, b"5000"),
                (LT, b"160000"),
                (RR, b"4999"),
                (RT, b"1000"),
                (TR, b"12ms"),
                (TT, b"1h2m3.5s"),
            ],
            Some((
                Some(160_000),
                Some(1000),
                ms(3_723_500),
                Some("tokens".to_owned()),
            )),
        ),
        case(
            "tokens exhausted",
            &[
                (LR, b"60"),
                (RR, b"1"),
                (LT, b"1000"),
                (RT, b"0"),
                (TT, b"20ms"),
            ],
            Some((Some(1000), Some(0), ms(20), Some("tokens".to_owned()))),
        ),
        case(
            "a tie: requests",
            &[(LR, b"10"), (RR, b"10"), (LT, b"100"), (RT, b"100")],
            want(Some(10), Some(10), None, Some("requests")),
        ),
        case(
            "requests only",
            &[(LR, b"60"), (RR, b"0"), (TR, b"0s")],
            want(Some(60), Some(0), Some(0), Some("requests")),
        ),
        case(
            "Azure: plain seconds",
            &[(RT, b"10"), (TT, b"20")],
            want(None, Some(10), Some(20), Some("tokens")),
        ),
        case(
            "huge duration saturates",
            &[(TR, b"99999999h")],
            want(None, None, Some(MAX_SECS), Some("requests")),
        ),
        case(
            "remaining > limit: both as given",
            &[(LR, b"1"), (RR, b"5")],
            want(Some(1), Some(5), None, Some("requests")),
        ),
        // malformed
        case(
            "Azure's -1: only the reset is left",
            &[(LT, b"-1"), (RT, b"-1"), (TT, b"0")],
            want(None, None, Some(0), Some("tokens")),
        ),
        case(
            "bad duration: absent",
            &[(RR, b"5"), (TR, b"6 minutes")],
            want(None, Some(5), None, Some("requests")),
        ),
        case(
            "negative duration: absent",
            &[(RR, b"5"), (TR, b"-1s")],
            want(None, Some(5), None, Some("requests")),
        ),
        case(
            "a bad budget does not hide a good one",
            &[(RR, b"x"), (LR, b"-3"), (TR, b"soon"), (RT, b"7")],
            want(None, Some(7), None, Some("tokens")),
        ),
        case("overflow", &[(RR, b"99999999999999999999")], None),
        case("decimal count", &[(RR, b"5.5")], None),
        case("non-UTF-8 count", &[(RR, b"\xc3\xa9")], None),
        case("non-UTF-8 duration", &[(TR, b"1\xb5s")], None),
        case("conflicting repeats", &[(RR, b"1"), (RR, b"2")], None),
        case(
            "unknown budget names ignored",
            &[("x-ratelimit-remaining-tokens_usage_based", b"5")],
            None,
        ),
    ];
    run("OpenAI", &cases);
}

#[test]
fn anthropic_table() {
    let n = |budget: &str, field: &str| format!("anthropic-ratelimit-{budget}-{field}");
    let in_59s: &[u8] = b"2025-08-21T12:40:59Z";
    let in_1s: &[u8] = b"2025-08-21T12:40:01Z";
    let cases = [
        case(
            "the four budgets: output tokens nearer",
            &[
                (n("requests", "limit").as_str(), b"1000"),
                (n("requests", "remaining").as_str(), b"999"),
                (n("requests", "reset").as_str(), in_1s),
                (n("tokens", "limit").as_str(), b"96000"),
                (n("tokens", "remaining").as_str(), b"90000"),
                (n("tokens", "reset").as_str(), in_1s),
                (n("input-tokens", "limit").as_str(), b"80000"),
                (n("input-tokens", "remaining").as_str(), b"80000"),
                (n("input-tokens", "reset").as_str(), in_1s),
                (n("output-tokens", "limit").as_str(), b"16000"),
                (n("output-tokens", "remaining").as_str(), b"1000"),
                (n("output-tokens", "reset").as_str(), in_59s),
            ],
            want(Some(16000), Some(1000), Some(59), Some("output-tokens")),
        ),
        case(
            "requests exhausted",
            &[
                (n("requests", "limit").as_str(), b"50"),
                (n("requests", "remaining").as_str(), b"0"),
                (n("requests", "reset").as_str(), in_59s),
                (n("tokens", "limit").as_str(), b"40000"),
                (n("tokens", "remaining").as_str(), b"100"),
            ],
            want(Some(50), Some(0), Some(59), Some("requests")),
        ),
        case(
            "fractional seconds",
            &[(n("tokens", "reset").as_str(), b"2025-08-21T12:40:00.250Z")],
            Some((
                None,
                None,
                Some(Duration::from_millis(250)),
                Some("tokens".to_owned()),
            )),
        ),
        case(
            "a numeric offset",
            &[(n("tokens", "reset").as_str(), b"2025-08-21T14:40:59+02:00")],
            want(None, None, Some(59), Some("tokens")),
        ),
        case(
            "reset in the past",
            &[
                (n("requests", "remaining").as_str(), b"5"),
                (n("requests", "reset").as_str(), b"2025-08-21T12:00:00Z"),
            ],
            want(None, Some(5), Some(0), Some("requests")),
        ),
        case(
            "far future saturates",
            &[(n("requests", "reset").as_str(), b"9999-12-31T23:59:59Z")],
            want(None, None, Some(MAX_SECS), Some("requests")),
        ),
        // malformed
        case(
            "bad date: absent",
            &[
                (n("requests", "remaining").as_str(), b"5"),
                (n("requests", "reset").as_str(), b"2025-13-01T00:00:00Z"),
            ],
            want(None, Some(5), None, Some("requests")),
        ),
        case(
            "seconds are not a date",
            &[
                (n("requests", "remaining").as_str(), b"5"),
                (n("requests", "reset").as_str(), b"60"),
            ],
            want(None, Some(5), None, Some("requests")),
        ),
        case(
            "HTTP-date is not RFC 3339",
            &[(
                n("requests", "reset").as_str(),
                b"Thu, 21 Aug 2025 12:40:59 GMT",
            )],
            None,
        ),
        case(
            "no zone",
            &[(n("requests", "reset").as_str(), b"2025-08-21T12:40:59")],
            None,
        ),
        case(
            "offset out of range",
            &[(
                n("requests", "reset").as_str(),
                b"2025-08-21T12:40:59+25:00",
            )],
            None,
        ),
        case(
            "negative limit",
            &[(n("tokens", "limit").as_str(), b"-1")],
            None,
        ),
        case(
            "overflow",
            &[(n("tokens", "remaining").as_str(), b"18446744073709551616")],
            None,
        ),
        case(
            "non-UTF-8",
            &[(n("tokens", "reset").as_str(), b"2025-08-21T12:40:59\xff")],
            None,
        ),
        case(
            "conflicting repeats",
            &[
                (n("tokens", "remaining").as_str(), b"1"),
                (n("tokens", "remaining").as_str(), b"2"),
            ],
            None,
        ),
        case(
            "unknown budget ignored",
            &[(n("unified", "remaining").as_str(), b"1")],
            None,
        ),
    ];
    run("Anthropic", &cases);
}

#[test]
fn precedence_between_families() {
    let openai: &[(&str, &[u8])] = &[("x-ratelimit-remaining-requests", b"1")];
    let anthropic: &[(&str, &[u8])] = &[("anthropic-ratelimit-requests-remaining", b"2")];
    let github: &[(&str, &[u8])] = &[
        ("x-ratelimit-remaining", b"3"),
        ("x-ratelimit-resource", b"core"),
    ];
    let draft06: &[(&str, &[u8])] = &[("ratelimit-remaining", b"4")];
    let draft07: &[(&str, &[u8])] = &[("ratelimit", b"remaining=5")];
    let current: &[(&str, &[u8])] = &[("ratelimit", br#""p";r=6"#)];
    let remaining = |parts: &[&[(&str, &[u8])]]| {
        let pairs: Vec<(&str, &[u8])> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        rate_limit::from_headers_at(&headers(&pairs), now()).and_then(|rl| rl.remaining())
    };
    assert_eq!(remaining(&[anthropic, openai]), Some(1));
    assert_eq!(remaining(&[openai, github, anthropic]), Some(3));
    assert_eq!(remaining(&[github, draft06]), Some(4));
    assert_eq!(remaining(&[draft06, draft07, github]), Some(5));
    assert_eq!(remaining(&[draft06, current, openai]), Some(6));

    // A malformed family gives way to the next.
    let bad_current: &[(&str, &[u8])] = &[("ratelimit", br#""p";r=-1"#)];
    let bad_github: &[(&str, &[u8])] = &[("x-ratelimit-remaining", b"-1")];
    assert_eq!(remaining(&[bad_current, anthropic]), Some(2));
    assert_eq!(remaining(&[bad_github, openai]), Some(1));

    assert_eq!(rate_limit::from_headers_at(&HeaderMap::new(), now()), None);
    let unrelated = headers(&[("retry-after", b"5"), ("content-type", b"application/json")]);
    assert_eq!(rate_limit::from_headers_at(&unrelated, now()), None);
}

#[test]
fn is_exhausted_is_remaining_zero() {
    let parse =
        |v: &[u8]| rate_limit::from_headers_at(&headers(&[("x-ratelimit-remaining", v)]), now());
    assert!(parse(b"0").expect("parses").is_exhausted());
    assert!(!parse(b"1").expect("parses").is_exhausted());
    let reset_only = rate_limit::from_headers_at(&headers(&[("x-ratelimit-reset", b"5")]), now());
    assert!(!reset_only.expect("parses").is_exhausted());
}

#[test]
fn from_headers_uses_the_system_clock() {
    let in_a_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 60;
    let map = headers(&[
        ("x-ratelimit-resource", b"core"),
        ("x-ratelimit-reset", in_a_minute.to_string().as_bytes()),
    ]);
    let reset = rate_limit::from_headers(&map)
        .and_then(|rl| rl.reset_after())
        .expect("a reset");
    assert!(
        reset > Duration::from_secs(50) && reset <= Duration::from_secs(60),
        "{reset:?}"
    );
}

// ---- properties ----

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
];

/// Header values: arbitrary bytes, and text made of the characters these
/// grammars use, so that near-misses are common.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[-0-9a-z\";=,:.()?@%*/+ TZhmsµ]{0,48}".prop_map(String::into_bytes),
        (0u64..=u64::MAX).prop_map(|n| n.to_string().into_bytes()),
        (0i64..=4_000_000_000).prop_map(|n| n.to_string().into_bytes()),
        (0u32..100, 0u32..60, 0u32..60, 0u32..1000)
            .prop_map(|(h, m, s, ms)| format!("{h}h{m}m{s}.{ms:03}s").into_bytes()),
        (
            1970u32..10000,
            1u32..13,
            1u32..32,
            0u32..24,
            0u32..60,
            0u32..61
        )
            .prop_map(|(y, mo, d, h, mi, s)| format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"
            )
            .into_bytes()),
        (
            0i64..=999_999_999_999_999,
            0i64..=999_999_999_999_999,
            -5i64..100_000
        )
            .prop_map(|(q, r, t)| format!("\"p\";q={q};r={r};t={t}, \"o\";r={r}").into_bytes()),
    ]
}

fn any_now() -> impl Strategy<Value = SystemTime> {
    // Up to the end of year 9999.
    (0u64..=253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_and_reset_is_capped(
        pairs in proptest::collection::vec((0..NAMES.len(), value()), 0..10),
        now in any_now(),
    ) {
        let mut map = HeaderMap::new();
        for (i, v) in &pairs {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                map.append(HeaderName::from_static(NAMES[*i]), v);
            }
        }
        if let Some(rl) = rate_limit::from_headers_at(&map, now) {
            if let Some(reset) = rl.reset_after() {
                prop_assert!(reset <= MAX_RESET_AFTER, "{reset:?}");
            }
            prop_assert!(rl.limit().is_some() || rl.remaining().is_some() || rl.reset_after().is_some());
            prop_assert_eq!(rl.is_exhausted(), rl.remaining() == Some(0));
        }
    }

    #[test]
    fn counts_are_reported_as_given(limit in any::<u64>(), remaining in any::<u64>()) {
        let map = headers(&[
            ("x-ratelimit-limit", limit.to_string().as_bytes()),
            ("x-ratelimit-remaining", remaining.to_string().as_bytes()),
        ]);
        let rl = rate_limit::from_headers_at(&map, now()).expect("parses");
        prop_assert_eq!((rl.limit(), rl.remaining()), (Some(limit), Some(remaining)));
    }

    #[test]
    fn ietf_quota_and_remaining_are_reported_as_given(
        q in 0u64..=999_999_999_999_999,
        r in 0u64..=999_999_999_999_999,
        t in 0u64..=999_999_999_999_999,
    ) {
        let policy = format!("\"p\";q={q};w=60");
        let limit = format!("\"p\";r={r};t={t}");
        let map = headers(&[("ratelimit-policy", policy.as_bytes()), ("ratelimit", limit.as_bytes())]);
        let rl = rate_limit::from_headers_at(&map, now()).expect("parses");
        prop_assert_eq!((rl.limit(), rl.remaining()), (Some(q), Some(r)));
        prop_assert_eq!(rl.reset_after(), Some(Duration::from_secs(t).min(MAX_RESET_AFTER)));
    }

    #[test]
    fn go_durations_round_trip(h in 0u64..10_000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
        let text = format!("{h}h{m}m{s}.{ms:03}s");
        let map = headers(&[("x-ratelimit-reset-tokens", text.as_bytes())]);
        let rl = rate_limit::from_headers_at(&map, now()).expect("parses");
        let d = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
        prop_assert_eq!(rl.reset_after(), Some(d.min(MAX_RESET_AFTER)));
    }

    #[test]
    fn github_epoch_resets_count_from_now(delta in -100_000i64..100_000_000) {
        let at = epoch(delta);
        let map = headers(&[("x-ratelimit-used", b"1"), ("x-ratelimit-reset", at.as_bytes())]);
        let rl = rate_limit::from_headers_at(&map, now()).expect("parses");
        let want = Duration::from_secs(delta.max(0).unsigned_abs()).min(MAX_RESET_AFTER);
        prop_assert_eq!(rl.reset_after(), Some(want));
    }
}
