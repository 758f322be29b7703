//! The header rules of a forwarding proxy, in one pure function: [`rewrite`].
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use http::{HeaderMap, HeaderValue, Version};
//! use kneo_proxy::headers::{rewrite, Hop};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", HeaderValue::from_static("x-session"));
//! headers.insert("x-session", HeaderValue::from_static("abc"));
//! headers.insert("host", HeaderValue::from_static("caller.example"));
//! headers.insert("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
//! rewrite(&mut headers, &Hop::Request {
//!     version: Version::HTTP_11,
//!     peer: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
//!     upstream_host: HeaderValue::from_static("api.internal:8443"),
//! });
//! assert!(!headers.contains_key("connection") && !headers.contains_key("x-session"));
//! assert_eq!(headers["host"], "api.internal:8443");
//! assert_eq!(headers["x-forwarded-host"], "caller.example");
//! assert_eq!(headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
//! assert_eq!(headers["x-forwarded-proto"], "http");
//! assert_eq!(headers["via"], "1.1 kneo");
//! ```
//!
//! # The rules
//!
//! Both directions (RFC 9110 §7.6.1): `Connection`, every header named in
//! it, and the fixed hop-by-hop set (`Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`,
//! `Proxy-Authenticate`) are removed; hyper frames the next hop itself. A
//! request's `TE` that lists `trailers` is passed on as `TE: trailers`, as
//! gRPC needs. `Via` gets this hop's entry appended, an incoming one kept
//! (§7.6.3).
//!
//! Requests only: `Host` becomes the upstream's authority, `X-Forwarded-For`
//! gets the caller's address appended, `X-Forwarded-Host` is set to the
//! caller's `Host` and `X-Forwarded-Proto` to `http` (the listener is plain
//! HTTP). An incoming `Forwarded` (RFC 7239) is passed on untouched.
//!
//! Upgrades (RFC 9110 §7.8) are the one exception, and explicit: for a
//! request that [`upgrade_protocol`] says asks to switch protocols, the
//! caller of [`rewrite`] puts `Connection: upgrade` and the `Upgrade` back
//! with [`keep_upgrade`], on the request and on its `101` answer.
//!
//! Lists are joined into one field line (`10.1.2.3, 127.0.0.1`): servers
//! that read only the first line still see the whole chain.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::Version;

/// `Keep-Alive` (not in `http`'s constants).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`, the non-standard predecessor of `Connection`.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The fixed hop-by-hop headers, beside those named in `Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Which hop a header map is crossing, and what the rules need to know of it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Hop {
    /// A caller's request on its way upstream.
    Request {
        /// The version the caller spoke (this hop's `Via` entry).
        version: Version,
        /// The caller's address, appended to `X-Forwarded-For` (nothing is
        /// appended when it is unknown).
        peer: Option<IpAddr>,
        /// The upstream's authority, the new `Host`.
        upstream_host: HeaderValue,
    },
    /// An upstream's response on its way back to the caller.
    Response {
        /// The version the upstream spoke (this hop's `Via` entry).
        version: Version,
    },
}

/// Rewrites `headers` for the next hop; see the [module docs](self) for
/// the rules. No I/O, no clock: the same input gives the same output.
pub fn rewrite(headers: &mut HeaderMap, hop: &Hop) {
    let trailers = matches!(hop, Hop::Request { .. }) && te_lists_trailers(headers);
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    match hop {
        Hop::Request {
            version,
            peer,
            upstream_host,
        } => {
            match headers.remove(HOST) {
                Some(host) => headers.insert(X_FORWARDED_HOST, host),
                None => headers.remove(X_FORWARDED_HOST),
            };
            headers.insert(HOST, upstream_host.clone());
            if let Some(peer) = peer {
                append_peer(headers, *peer);
            }
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            append_via(headers, *version);
        }
        Hop::Response { version } => append_via(headers, *version),
    }
}

/// Appends this hop's `Via` entry: a static value when there is no `Via`
/// yet (the usual case, nothing to join, nothing to allocate).
fn append_via(headers: &mut HeaderMap, version: Version) {
    match headers.entry(VIA) {
        http::header::Entry::Vacant(vacant) => {
            vacant.insert(HeaderValue::from_static(via(version)));
        }
        http::header::Entry::Occupied(_) => append_list(headers, VIA, via(version)),
    }
}

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set.
///
/// `Connection` is read as bytes: a line that also carries a byte outside
/// visible ASCII still has every name in it honoured.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = list_items(headers, &CONNECTION)
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // One pass over the names (standard ones compare as numbers) rather
    // than a hashed lookup per hop-by-hop name: most messages have none.
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// The protocol a request asks to switch to, when it asks (RFC 9110 §7.8):
/// its `Upgrade`, on HTTP/1.1, when `Connection` lists `upgrade`. `h2c` is
/// not one: the proxy speaks HTTP/2 itself (prior knowledge), and RFC 9113
/// retired the h2c upgrade; such a request is forwarded as a plain one.
pub fn upgrade_protocol(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asked = list_items(headers, &CONNECTION).any(|item| item.eq_ignore_ascii_case(b"upgrade"));
    let protocol = headers.get(UPGRADE).filter(|_| asked)?;
    let h2c = list_items(headers, &UPGRADE).any(|item| item.eq_ignore_ascii_case(b"h2c"));
    (!h2c && !protocol.is_empty()).then(|| protocol.clone())
}

/// Puts an upgrade back after [`rewrite`]: `Connection: upgrade` and
/// `Upgrade: protocol`, on the handshake and on its `101` answer.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// `true` when a `TE` header lists `trailers`.
fn te_lists_trailers(headers: &HeaderMap) -> bool {
    list_items(headers, &TE).any(|item| {
        let coding = item.split(|&b| b == b';').next().unwrap_or_default();
        trim_ows(coding).eq_ignore_ascii_case(b"trailers")
    })
}

/// The items of a comma-separated list header, every field line, as bytes
/// trimmed of optional whitespace.
fn list_items<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
}

/// `bytes` without leading and trailing spaces and tabs (RFC 9110's OWS).
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// This hop's `Via` entry: the protocol version it received, and `kneo`.
fn via(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9 kneo",
        Version::HTTP_10 => "1.0 kneo",
        Version::HTTP_2 => "2 kneo",
        Version::HTTP_3 => "3 kneo",
        _ => "1.1 kneo",
    }
}

/// Appends the caller's address to `X-Forwarded-For`. When the caller
/// sent none (the usual case) the value is the address alone, formatted
/// once per thread for the last address seen: a sidecar's callers are few
/// addresses (loopback, most often), and formatting one costs more than the
/// rest of the rewrite.
fn append_peer(headers: &mut HeaderMap, peer: IpAddr) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    if headers.contains_key(X_FORWARDED_FOR) {
        append_list(headers, X_FORWARDED_FOR, &peer.to_string());
        return;
    }
    let value = LAST.with_borrow_mut(|last| {
        if let Some((_, value)) = last.as_ref().filter(|(ip, _)| *ip == peer) {
            return Some(value.clone());
        }
        // An address is digits, dots, colons and hex: always a value.
        let value = HeaderValue::try_from(peer.to_string()).ok()?;
        *last = Some((peer, value.clone()));
        Some(value)
    });
    if let Some(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Appends `item` to the comma-separated list in `name`, joining any field
/// lines there into one. A value that is not visible ASCII is dropped
/// rather than passed on half-understood.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut joined = String::new();
    for v in headers.get_all(&name) {
        if let Ok(v) = v.to_str() {
            let v = v.trim();
            if !v.is_empty() {
                joined.push_str(v);
                joined.push_str(", ");
            }
        }
    }
    let value = if joined.is_empty() {
        HeaderValue::from_str(item)
    } else {
        joined.push_str(item);
        HeaderValue::from_str(&joined)
    };
    // `item` is an address or a static token, and the rest was visible
    // ASCII already: this cannot fail, but a header is never worth a panic.
    if let Ok(value) = value {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("test name"),
                HeaderValue::from_str(v).expect("test value"),
            );
        }
        m
    }

    fn request() -> Hop {
        Hop::Request {
            version: Version::HTTP_11,
            peer: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            upstream_host: HeaderValue::from_static("up:9"),
        }
    }

    fn response() -> Hop {
        Hop::Response {
            version: Version::HTTP_11,
        }
    }

    /// What a row says, the hop, the headers in, the headers out (exactly).
    type Row = (&'static str, Hop, Vec<Pair>, Vec<Pair>);
    type Pair = (&'static str, &'static str);

    /// One row: the hop, the headers in, the headers out (exactly).
    #[test]
    fn table() {
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("a bare request gets host, forwarding and via",
             request(), vec![("host", "caller")],
             vec![("host", "up:9"), ("x-forwarded-host", "caller"), ("x-forwarded-for", "127.0.0.1"),
                  ("x-forwarded-proto", "http"), ("via", "1.1 kneo")]),
            ("no caller host: no x-forwarded-host, a caller's one dropped",
             request(), vec![("x-forwarded-host", "forged")],
             vec![("host", "up:9"), ("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"), ("via", "1.1 kneo")]),
            ("x-forwarded-for and via are appended to, lines joined",
             request(), vec![("x-forwarded-for", "10.1.2.3"), ("x-forwarded-for", "10.0.0.9"), ("via", "1.0 fred"), ("x-forwarded-proto", "https")],
             vec![("host", "up:9"), ("x-forwarded-for", "10.1.2.3, 10.0.0.9, 127.0.0.1"),
                  ("x-forwarded-proto", "http"), ("via", "1.0 fred, 1.1 kneo")]),
            ("hop-by-hop and connection-named headers go, end-to-end ones stay",
             request(), vec![("connection", "keep-alive, X-Secret"), ("connection", "x-other"), ("x-secret", "1"), ("x-other", "2"),
                             ("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive"), ("transfer-encoding", "chunked"),
                             ("upgrade", "websocket"), ("proxy-authorization", "Basic Zm9vOmJhcg=="), ("te", "gzip"),
                             ("x-request-id", "r-1"), ("forwarded", "for=10.1.2.3"), ("authorization", "Bearer t")],
             vec![("x-request-id", "r-1"), ("forwarded", "for=10.1.2.3"), ("authorization", "Bearer t"), ("host", "up:9"),
                  ("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"), ("via", "1.1 kneo")]),
            ("te: trailers survives, alone",
             request(), vec![("te", "deflate;q=0.5, Trailers")],
             vec![("te", "trailers"), ("host", "up:9"), ("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"), ("via", "1.1 kneo")]),
            ("a response loses hop-by-hop headers and gains via",
             response(), vec![("connection", "x-up-secret"), ("x-up-secret", "1"), ("keep-alive", "timeout=5"),
                              ("proxy-authenticate", "Basic"), ("transfer-encoding", "chunked"), ("te", "trailers"),
                              ("content-length", "3"), ("x-kept", "yes"), ("via", "1.1 upstream")],
             vec![("content-length", "3"), ("x-kept", "yes"), ("via", "1.1 upstream, 1.1 kneo")]),
            ("a response keeps its own host-like headers",
             response(), vec![("x-forwarded-for", "1.2.3.4"), ("host", "weird")],
             vec![("x-forwarded-for", "1.2.3.4"), ("host", "weird"), ("via", "1.1 kneo")]),
            ("via names the version received",
             Hop::Response { version: Version::HTTP_2 }, vec![],
             vec![("via", "2 kneo")]),
            ("an unknown peer appends nothing",
             Hop::Request { version: Version::HTTP_10, peer: None, upstream_host: HeaderValue::from_static("up") },
             vec![("x-forwarded-for", "10.1.2.3")],
             vec![("x-forwarded-for", "10.1.2.3"), ("host", "up"), ("x-forwarded-proto", "http"), ("via", "1.0 kneo")]),
        ];
        for (what, hop, input, expected) in rows {
            let mut headers = map(&input);
            rewrite(&mut headers, &hop);
            let expected = map(&expected);
            let sorted = |m: &HeaderMap| {
                let mut v: Vec<(String, String)> = m
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(sorted(&headers), sorted(&expected), "{what}");
        }
    }

    /// The address a thread formatted last is reused only for that
    /// address: callers taking turns each get their own.
    #[test]
    fn each_caller_gets_its_own_address() {
        let peers: [IpAddr; 4] = [
            Ipv4Addr::new(10, 0, 0, 1).into(),
            "::1".parse().expect("an address"),
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(192, 168, 7, 30).into(),
        ];
        for peer in peers {
            let mut headers = HeaderMap::new();
            let hop = Hop::Request {
                version: Version::HTTP_11,
                peer: Some(peer),
                upstream_host: HeaderValue::from_static("up:9"),
            };
            rewrite(&mut headers, &hop);
            assert_eq!(headers[X_FORWARDED_FOR], peer.to_string().as_str());
        }
    }

    #[test]
    fn upgrades_are_asked_for_on_http11_with_connection_upgrade() {
        #[rustfmt::skip]
        let rows: [(&str, Version, Vec<Pair>, Option<&str>); 8] = [
            ("a WebSocket handshake", Version::HTTP_11,
             vec![("connection", "Upgrade"), ("upgrade", "websocket")], Some("websocket")),
            ("Firefox lists keep-alive too", Version::HTTP_11,
             vec![("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")], Some("websocket")),
            ("over two connection lines", Version::HTTP_11,
             vec![("connection", "x-a"), ("connection", " upgrade "), ("upgrade", "foo/2, bar")], Some("foo/2, bar")),
            ("upgrade without connection: upgrade", Version::HTTP_11,
             vec![("upgrade", "websocket")], None),
            ("connection: upgrade without upgrade", Version::HTTP_11,
             vec![("connection", "upgrade")], None),
            ("h2c is not passed on", Version::HTTP_11,
             vec![("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")], None),
            ("not on HTTP/1.0", Version::HTTP_10,
             vec![("connection", "upgrade"), ("upgrade", "websocket")], None),
            ("not on HTTP/2", Version::HTTP_2,
             vec![("connection", "upgrade"), ("upgrade", "websocket")], None),
        ];
        for (what, version, input, expected) in rows {
            let headers = map(&input);
            let protocol = upgrade_protocol(&headers, version);
            assert_eq!(
                protocol.as_ref().map(|p| p.to_str().expect("ascii")),
                expected,
                "{what}"
            );

            // What goes upstream: rewritten, the upgrade put back.
            let mut headers = headers;
            rewrite(&mut headers, &request());
            if let Some(protocol) = protocol {
                keep_upgrade(&mut headers, protocol);
                assert_eq!(headers[CONNECTION], "upgrade", "{what}");
                assert_eq!(headers.get_all(UPGRADE).iter().count(), 1, "{what}");
            } else {
                assert!(!headers.contains_key(UPGRADE), "{what}");
            }
        }
    }

    /// Found by `fuzz/fuzz_targets/proxy_headers.rs`: a `Connection` line
    /// with a byte outside visible ASCII (obs-text) was skipped whole, so
    /// the headers it named were forwarded.
    #[test]
    fn connection_with_obs_text_still_names_its_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_bytes(b"x-secret, caf\xe9").expect("obs-text is a valid value"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            TE,
            HeaderValue::from_bytes(b"trailers, \xff").expect("obs-text is a valid value"),
        );
        rewrite(&mut headers, &request());
        assert!(!headers.contains_key("x-secret"), "{headers:?}");
        assert!(!headers.contains_key(CONNECTION));
        assert_eq!(headers[TE], "trailers");
    }
}
