//! kneo-proxy's header rewriting over any header map: afterwards no
//! hop-by-hop header is left (`Connection`, `Keep-Alive`,
//! `Proxy-Connection`, `TE` but `TE: trailers`, `Transfer-Encoding`,
//! `Upgrade`, `Proxy-Authorization`, `Proxy-Authenticate`), nor any header
//! an incoming `Connection` names (but those the proxy sets itself); a
//! request's `Host` is the upstream's; `Via` ends with this hop.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use http::header::{CONNECTION, HOST, TE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use kneo_proxy::headers::{rewrite, Hop, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use libfuzzer_sys::fuzz_target;

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
    "authorization",
    "content-length",
];

const FIXED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
    request: bool,
    version: u8,
    peer: Option<(bool, u128)>,
    upstream_host: Vec<u8>,
}

/// The names an incoming `Connection` lists, read as bytes: a comma-separated
/// list of tokens, around optional whitespace.
fn named_in_connection(headers: &HeaderMap) -> HashSet<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|token| {
            let start = token.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
            let end = token.iter().rposition(|b| !matches!(b, b' ' | b'\t'))?;
            HeaderName::from_bytes(&token[start..=end]).ok()
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = match name {
            Name::Known(i) => HeaderName::from_static(NAMES[usize::from(*i) % NAMES.len()]),
            Name::Any(bytes) => match HeaderName::from_bytes(bytes) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let version = match input.version % 5 {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        _ => Version::HTTP_3,
    };
    let upstream_host = HeaderValue::from_bytes(&input.upstream_host)
        .unwrap_or_else(|_| HeaderValue::from_static("up.internal:8443"));
    let hop = if input.request {
        Hop::Request {
            version,
            peer: input.peer.map(|(v6, bits)| {
                if v6 {
                    IpAddr::V6(Ipv6Addr::from(bits))
                } else {
                    IpAddr::V4(Ipv4Addr::from(bits as u32))
                }
            }),
            upstream_host: upstream_host.clone(),
        }
    } else {
        Hop::Response { version }
    };

    let named = named_in_connection(&headers);
    let before = headers.clone();
    rewrite(&mut headers, &hop);

    for name in FIXED {
        assert!(!headers.contains_key(*name), "{name} left: {headers:?}");
    }
    let te: Vec<_> = headers.get_all(TE).iter().collect();
    if input.request {
        assert!(
            te.is_empty() || te == [HeaderValue::from_static("trailers")],
            "{te:?}"
        );
    } else {
        assert!(te.is_empty(), "a response's TE left: {te:?}");
    }
    // What the proxy writes itself is this hop's, not the incoming one's.
    // A response gets only `Via`; a request also the forwarding headers.
    let own: &[HeaderName] = if input.request {
        &[
            HOST,
            VIA,
            TE,
            X_FORWARDED_FOR,
            X_FORWARDED_HOST,
            X_FORWARDED_PROTO,
        ]
    } else {
        &[VIA]
    };
    for name in named.iter().filter(|n| !own.contains(n)) {
        assert!(
            !headers.contains_key(name),
            "{name} is named in Connection but left: {before:?} -> {headers:?}"
        );
    }
    let via = headers.get_all(VIA).iter().collect::<Vec<_>>();
    assert_eq!(via.len(), 1, "{via:?}");
    assert!(via[0].as_bytes().ends_with(b" kneo"), "{via:?}");
    if input.request {
        assert_eq!(
            headers.get_all(HOST).iter().collect::<Vec<_>>(),
            [&upstream_host]
        );
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
    }
    // End-to-end headers pass untouched.
    for (name, value) in before.iter() {
        let hop_by_hop = FIXED.contains(&name.as_str()) || name == TE || named.contains(name);
        if !hop_by_hop && !own.contains(name) {
            assert!(
                headers.get_all(name).iter().any(|v| v == value),
                "{name}: {value:?} lost"
            );
        }
    }
});
