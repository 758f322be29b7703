//! Properties of kneo-proxy's header rewriting (`headers::rewrite`), on
//! stable and in the normal test suite: the invariants the cargo-fuzz target
//! `fuzz/fuzz_targets/proxy_headers.rs` asserts, over generated header maps
//! that are mostly near-valid (the hop-by-hop names, `Connection` lists that
//! name headers the map has, in any case and spacing, `TE` lists with and
//! without `trailers`, obs-text) and partly arbitrary names and bytes.
//!
//! After `rewrite`, for a request and a response alike: no hop-by-hop header
//! is left, `TE` but a request's `TE: trailers` (exactly when the caller's
//! `TE` listed it); nothing an incoming `Connection` names is left but the
//! headers the proxy writes itself; `Via` is one line that ends with this
//! hop's entry, after the incoming entries; every other header passes with
//! its values in order and nothing else is added. For a request, `Host` is
//! the upstream's, `X-Forwarded-Host` the caller's `Host`,
//! `X-Forwarded-Proto` is `http` and `X-Forwarded-For` ends with the peer.

use std::collections::HashSet;
use std::net::IpAddr;

use http::header::{CONNECTION, HOST, TE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use kneo_proxy::headers::{rewrite, Hop, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use proptest::prelude::*;
use proptest::sample::select;

/// The headers the rules name, and a few end-to-end ones.
const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-secret",
    "x-session",
    "authorization",
    "content-length",
];

/// The fixed hop-by-hop set, `TE` aside (a request may keep `TE: trailers`).
const FIXED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// A header name: mostly one the rules care about, else any token, else
/// any bytes (most of which are no name, and are skipped).
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => select(NAMES).prop_map(|n| n.as_bytes().to_vec()),
        2 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

/// A `Connection` list naming headers from [`NAMES`] and others, in any
/// case, with whitespace, empty items and an odd byte here and there.
fn connection_list() -> impl Strategy<Value = Vec<u8>> {
    let item = prop_oneof![
        4 => (select(NAMES), any::<bool>()).prop_map(|(n, upper)| {
            let n = n.as_bytes().to_vec();
            if upper { n.to_ascii_uppercase() } else { n }
        }),
        1 => "[A-Za-z0-9-]{0,8}".prop_map(String::into_bytes),
        // `café` in Latin-1: obs-text, as an old client might send it.
        1 => Just(b"caf\xe9".to_vec()),
    ];
    proptest::collection::vec((item, "[ \t]{0,2}", "[ \t]{0,2}"), 1..4).prop_map(|items| {
        let items: Vec<Vec<u8>> = items
            .into_iter()
            .map(|(name, before, after)| [before.as_bytes(), &name, after.as_bytes()].concat())
            .collect();
        items.join(&b","[..])
    })
}

/// A `TE` value: codings with and without `trailers`, in any case, with
/// parameters and odd bytes.
fn te_value() -> impl Strategy<Value = Vec<u8>> {
    let coding = prop_oneof![
        select(
            &[
                "trailers",
                "Trailers",
                "TRAILERS",
                "gzip",
                "deflate",
                "trailersx",
                "x-trailers"
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z]{0,6}",
    ];
    let item = (
        coding,
        proptest::option::of("q=[01](\\.[0-9])?"),
        "[ \t]{0,2}",
    )
        .prop_map(|(c, q, ws)| match q {
            Some(q) => format!("{ws}{c}{ws};{q}"),
            None => format!("{ws}{c}{ws}"),
        });
    prop_oneof![
        4 => proptest::collection::vec(item, 1..4).prop_map(|items| items.join(",").into_bytes()),
        1 => Just(b"trailers, \xff".to_vec()),
    ]
}

/// A header value: lists of names, `TE` codings, hosts, forwarding chains,
/// `Via` entries, or any bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => connection_list(),
        1 => te_value(),
        2 => select(&[
            "chunked", "1.1 upstream", "1.0 fred, 1.1 nginx", "caller.example:8080", "10.1.2.3",
            "10.1.2.3, 10.0.0.9", "", " ", "keep-alive", "websocket", "Basic Zm9v",
        ][..])
        .prop_map(|v| v.as_bytes().to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

/// One call of `rewrite`: the headers in, and the hop.
#[derive(Debug, Clone)]
struct Input {
    headers: HeaderMap,
    hop: Hop,
}

fn input() -> impl Strategy<Value = Input> {
    let versions = vec![
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ];
    let upstream = prop_oneof![
        "[a-z0-9.-]{1,16}(:[0-9]{1,5})?".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    // The lines the rules read most, more often than chance would give
    // them, then anything.
    let line = |name: &'static str, value: BoxedStrategy<Vec<u8>>| {
        proptest::option::of(value.prop_map(move |v| (name.as_bytes().to_vec(), v)))
    };
    let lines = (
        line("connection", connection_list().boxed()),
        line("connection", connection_list().boxed()),
        line("te", te_value().boxed()),
        line("x-secret", Just(b"s3cret".to_vec()).boxed()),
        line("keep-alive", Just(b"timeout=5".to_vec()).boxed()),
        line("host", value().boxed()),
        line("via", value().boxed()),
        line("x-forwarded-for", value().boxed()),
    );
    (
        lines,
        proptest::collection::vec((name(), value()), 0..8),
        any::<bool>(),
        select(versions),
        any::<Option<IpAddr>>(),
        upstream,
    )
        .prop_map(|(lines, pairs, request, version, peer, upstream)| {
            let (a, b, c, d, e, f, g, h) = lines;
            let lines = [a, b, c, d, e, f, g, h].into_iter().flatten();
            let mut headers = HeaderMap::new();
            for (name, value) in lines.chain(pairs) {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(&name),
                    HeaderValue::from_bytes(&value),
                ) {
                    headers.append(name, value);
                }
            }
            let hop = if request {
                Hop::Request {
                    version,
                    peer,
                    upstream_host: HeaderValue::from_bytes(&upstream)
                        .unwrap_or_else(|_| HeaderValue::from_static("up.internal:8443")),
                }
            } else {
                Hop::Response { version }
            };
            Input { headers, hop }
        })
}

/// The names the incoming `Connection` lines list: comma-separated tokens
/// around optional whitespace, read as bytes.
fn named_in_connection(headers: &HeaderMap) -> HashSet<HeaderName> {
    list(headers, &CONNECTION)
        .filter_map(|item| HeaderName::from_bytes(item).ok())
        .collect()
}

/// The items of every line of a list header, trimmed of spaces and tabs.
fn list<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|item| {
            let start = item.iter().position(|b| !matches!(b, b' ' | b'\t'));
            let end = item.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
            match (start, end) {
                (Some(s), Some(e)) => &item[s..=e],
                _ => &item[..0],
            }
        })
}

/// What the proxy writes itself for this hop.
fn own(hop: &Hop) -> Vec<HeaderName> {
    match hop {
        Hop::Request { .. } => vec![
            HOST,
            VIA,
            TE,
            X_FORWARDED_FOR,
            X_FORWARDED_HOST,
            X_FORWARDED_PROTO,
        ],
        _ => vec![VIA],
    }
}

fn version_of(hop: &Hop) -> Version {
    match hop {
        Hop::Request { version, .. } | Hop::Response { version } => *version,
        _ => unreachable!("a test knows the two hops"),
    }
}

/// This hop's `Via` entry (RFC 9110 §7.6.3: the protocol version received).
fn via_entry(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9 kneo",
        Version::HTTP_10 => "1.0 kneo",
        Version::HTTP_2 => "2 kneo",
        Version::HTTP_3 => "3 kneo",
        _ => "1.1 kneo",
    }
}

/// The values of `name`, in order.
fn values<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Vec<&'h HeaderValue> {
    headers.get_all(name).iter().collect()
}

/// `item` appended to the visible-ASCII lines of `name` that the rewrite
/// keeps (those not named in `Connection`), joined by `, `.
fn appended(
    before: &HeaderMap,
    name: &HeaderName,
    named: &HashSet<HeaderName>,
    item: &str,
) -> String {
    let mut items: Vec<String> = Vec::new();
    if !named.contains(name) {
        for v in before.get_all(name) {
            if let Ok(v) = v.to_str() {
                let v = v.trim();
                if !v.is_empty() {
                    items.push(v.to_owned());
                }
            }
        }
    }
    items.push(item.to_owned());
    items.join(", ")
}

/// Runs `rewrite` on a copy of the input: (before, named, after).
fn rewritten(input: &Input) -> (HeaderMap, HashSet<HeaderName>, HeaderMap) {
    let mut after = input.headers.clone();
    rewrite(&mut after, &input.hop);
    (
        input.headers.clone(),
        named_in_connection(&input.headers),
        after,
    )
}

proptest! {
    #[test]
    fn no_hop_by_hop_header_is_left(input in input()) {
        let (before, _, after) = rewritten(&input);
        for name in FIXED {
            prop_assert!(!after.contains_key(*name), "{} left: {:?}", name, after);
        }
        let te = values(&after, &TE);
        if let Hop::Request { .. } = input.hop {
            let trailers = list(&before, &TE).any(|item| {
                let coding = item.split(|b| *b == b';').next().unwrap_or_default();
                let coding = String::from_utf8_lossy(coding);
                coding.trim_matches([' ', '\t']).eq_ignore_ascii_case("trailers")
            });
            let want: Vec<HeaderValue> = if trailers {
                vec![HeaderValue::from_static("trailers")]
            } else {
                vec![]
            };
            prop_assert_eq!(te, want.iter().collect::<Vec<_>>(), "from {:?}", values(&before, &TE));
        } else {
            prop_assert!(te.is_empty(), "a response's TE left: {:?}", te);
        }
    }

    #[test]
    fn nothing_named_in_connection_is_left(input in input()) {
        let (before, named, after) = rewritten(&input);
        let own = own(&input.hop);
        for name in named.iter().filter(|n| !own.contains(n)) {
            prop_assert!(
                !after.contains_key(name),
                "{} is named in Connection but left: {:?} -> {:?}", name, before, after
            );
        }
    }

    #[test]
    fn via_is_one_line_ending_with_this_hop(input in input()) {
        let (before, named, after) = rewritten(&input);
        let via = values(&after, &VIA);
        prop_assert_eq!(via.len(), 1, "{:?}", via);
        let entry = via_entry(version_of(&input.hop));
        prop_assert!(via[0].as_bytes().ends_with(b" kneo"), "{:?}", via);
        let want = appended(&before, &VIA, &named, entry);
        prop_assert_eq!(via[0].to_str().ok(), Some(want.as_str()));
    }

    #[test]
    fn a_request_goes_to_the_upstream_with_forwarding_headers(input in input()) {
        let Hop::Request { peer, upstream_host, .. } = &input.hop else {
            return Ok(());
        };
        let (before, named, after) = rewritten(&input);
        prop_assert_eq!(values(&after, &HOST), vec![upstream_host]);
        let http = HeaderValue::from_static("http");
        prop_assert_eq!(values(&after, &X_FORWARDED_PROTO), vec![&http]);
        // The caller's first Host, unless its Connection named it.
        let host = before.get(HOST).filter(|_| !named.contains(&HOST));
        prop_assert_eq!(values(&after, &X_FORWARDED_HOST), host.into_iter().collect::<Vec<_>>());
        match peer {
            Some(peer) => {
                let want = appended(&before, &X_FORWARDED_FOR, &named, &peer.to_string());
                let got = values(&after, &X_FORWARDED_FOR);
                prop_assert_eq!(got.len(), 1, "{:?}", got);
                prop_assert_eq!(got[0].to_str().ok(), Some(want.as_str()));
            }
            None if named.contains(&X_FORWARDED_FOR) => {
                prop_assert!(!after.contains_key(X_FORWARDED_FOR));
            }
            None => {
                let kept = values(&before, &X_FORWARDED_FOR);
                prop_assert_eq!(values(&after, &X_FORWARDED_FOR), kept);
            }
        }
    }

    #[test]
    fn end_to_end_headers_pass_untouched(input in input()) {
        let (before, named, after) = rewritten(&input);
        let own = own(&input.hop);
        let hop_by_hop = |name: &HeaderName| {
            FIXED.contains(&name.as_str()) || *name == TE || named.contains(name)
        };
        for name in before.keys() {
            if !hop_by_hop(name) && !own.contains(name) {
                prop_assert_eq!(values(&after, name), values(&before, name), "{}", name);
            }
        }
        for name in after.keys() {
            prop_assert!(before.contains_key(name) || own.contains(name), "{} added", name);
        }
    }
}
