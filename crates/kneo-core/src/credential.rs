//! Which headers carry a credential, and the one way to read them.
//!
//! A request's *credential material* is what says who is calling: by default
//! the values of `Authorization`, `Proxy-Authorization`, `X-Api-Key`
//! (Anthropic) and `Api-Key` (Azure OpenAI), and, opt-in, named cookies.
//! [`Credentials::write`] writes it in one canonical, framed form into a
//! sink (a hasher, a MAC), so that every layer that tells callers apart asks
//! the same question the same way: kneo's throttle partitions rate limits by
//! it, kneo-server's idempotency scope files keys under it. Neither keeps
//! the material raw; each feeds it straight into a digest.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use kneo_core::credential::Credentials;
//!
//! fn material(credentials: &Credentials, headers: &[(&'static str, &'static str)]) -> Vec<u8> {
//!     let mut map = HeaderMap::new();
//!     for (name, value) in headers {
//!         map.append(*name, HeaderValue::from_static(value));
//!     }
//!     let mut out = Vec::new();
//!     credentials.write(&map, |bytes: &[u8]| out.extend_from_slice(bytes));
//!     out
//! }
//!
//! let default = Credentials::new();
//! // Two tenants with the same Authorization but another X-Api-Key are two callers.
//! assert_ne!(
//!     material(&default, &[("authorization", "Bearer k"), ("x-api-key", "tenant1")]),
//!     material(&default, &[("authorization", "Bearer k"), ("x-api-key", "tenant2")]),
//! );
//! // An absent header is not an empty one.
//! assert_ne!(material(&default, &[]), material(&default, &[("api-key", "")]));
//! // Other headers are not credentials.
//! assert_eq!(material(&default, &[]), material(&default, &[("accept", "*/*")]));
//!
//! // Cookies count only by name, when asked for: the session cookie separates
//! // callers, an analytics cookie that changed between retries does not.
//! let sessions = Credentials::new().cookie("session");
//! assert_ne!(
//!     material(&sessions, &[("cookie", "session=alice")]),
//!     material(&sessions, &[("cookie", "session=bob")]),
//! );
//! assert_eq!(
//!     material(&sessions, &[("cookie", "session=alice; _ga=1")]),
//!     material(&sessions, &[("cookie", "_ga=2; session=alice")]),
//! );
//! ```
//!
//! # Why cookies are opt-in, and by name
//!
//! A browser's whole `Cookie` header changes between two sends of the same
//! request (an analytics cookie, a rotated CSRF token): hashing all of it
//! would make an honest retry look like another caller. Only the cookies that
//! identify the caller (a session id) belong in the material, and only the
//! deployment knows their names.
//!
//! # The encoding
//!
//! For each configured header name, in byte order of the lowercase names,
//! then for each configured cookie name, in byte order:
//!
//! - a tag, `h` (header) or `c` (cookie);
//! - the name's length as a big-endian `u64`, then the name;
//! - the number of values as a big-endian `u64` (0: absent);
//! - for each value, in the order sent: its length as a big-endian `u64`,
//!   then its bytes, unaltered.
//!
//! Every field is length-prefixed, so the encoding is injective: two
//! requests write the same bytes only when every configured header has the
//! same values in the same order and every configured cookie too. An absent
//! header (0 values) differs from an empty one (1 value of length 0). A
//! cookie's values are the values of every `name=value` pair with that name
//! across all `Cookie` headers (HTTP/2 may split them), in order.

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};

/// `X-Api-Key`: Anthropic's and many other APIs' key header.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// `Api-Key`: Azure OpenAI's key header.
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// The headers that carry a credential by default: `Authorization`,
/// `Proxy-Authorization`, `X-Api-Key` and `Api-Key`.
pub const DEFAULT_HEADERS: [HeaderName; 4] =
    [AUTHORIZATION, PROXY_AUTHORIZATION, X_API_KEY, API_KEY];

/// Which headers, and which cookies, carry a request's credential; see the
/// [module docs](self).
///
/// `Debug` prints the names, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Sorted by name, no duplicates.
    headers: Vec<HeaderName>,
    /// Sorted, no duplicates.
    cookies: Vec<String>,
}

impl Credentials {
    /// The [default headers](DEFAULT_HEADERS), no cookies.
    pub fn new() -> Self {
        DEFAULT_HEADERS
            .into_iter()
            .fold(Self::none(), Credentials::header)
    }

    /// No header and no cookie: every request writes the same material, so
    /// whatever is partitioned by it is shared by all callers.
    pub fn none() -> Self {
        Credentials {
            headers: Vec::new(),
            cookies: Vec::new(),
        }
    }

    /// Adds a header that carries a credential (a tenant key, a custom
    /// token header). Adding one twice changes nothing.
    pub fn header(mut self, name: HeaderName) -> Self {
        if let Err(at) = self
            .headers
            .binary_search_by(|h| h.as_str().cmp(name.as_str()))
        {
            self.headers.insert(at, name);
        }
        self
    }

    /// Adds a cookie, by its exact (case-sensitive) name, that identifies
    /// the caller, such as a session id. Other cookies are never read.
    /// Adding one twice changes nothing; a name that is not a cookie name
    /// (empty, or with `=` or `;`) matches nothing.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if let Err(at) = self.cookies.binary_search(&name) {
            self.cookies.insert(at, name);
        }
        self
    }

    /// The header names, in the order they are written.
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// The cookie names, in the order they are written.
    pub fn cookies(&self) -> &[String] {
        &self.cookies
    }

    /// Writes the credential material of a request with these headers into
    /// `sink`, in the [encoding](self#the-encoding) of the module docs, as a
    /// sequence of byte slices (feed them to a hasher or a MAC as they come).
    pub fn write(&self, headers: &HeaderMap, mut sink: impl FnMut(&[u8])) {
        for name in &self.headers {
            let values = headers.get_all(name);
            field(
                &mut sink,
                b"h",
                name.as_str().as_bytes(),
                values.iter().count(),
            );
            for value in values {
                frame(&mut sink, value.as_bytes());
            }
        }
        for name in &self.cookies {
            let count = cookies(headers, name).count();
            field(&mut sink, b"c", name.as_bytes(), count);
            for value in cookies(headers, name) {
                frame(&mut sink, value);
            }
        }
    }

    /// The headers [`write`](Self::write) reads (the configured ones, and
    /// `Cookie` when cookies are configured), copied out of `headers`: for a
    /// layer that may need the material only later, after the request has
    /// moved on. The values share their bytes with the originals; nothing
    /// is allocated when the request carries none of them.
    pub fn select(&self, headers: &HeaderMap) -> HeaderMap {
        let mut selected = HeaderMap::new();
        let cookie = (!self.cookies.is_empty()).then_some(&COOKIE);
        // A request carries a few headers: one pass over them compares
        // names, where a lookup per configured name hashes each (this runs
        // on every request through the throttle).
        if headers.len() <= 16 {
            let wanted = |name: &HeaderName| self.headers.contains(name) || cookie == Some(name);
            for (name, value) in headers {
                if wanted(name) {
                    selected.append(name.clone(), value.clone());
                }
            }
            return selected;
        }
        for name in self.headers.iter().chain(cookie) {
            for value in headers.get_all(name) {
                selected.append(name.clone(), value.clone());
            }
        }
        selected
    }
}

impl Default for Credentials {
    /// [`Credentials::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// A field's head: its tag, its name, framed, and how many values follow.
fn field(sink: &mut impl FnMut(&[u8]), tag: &[u8], name: &[u8], count: usize) {
    sink(tag);
    frame(sink, name);
    sink(&len(count));
}

/// `bytes`, after their length.
fn frame(sink: &mut impl FnMut(&[u8]), bytes: &[u8]) {
    sink(&len(bytes.len()));
    sink(bytes);
}

/// A length or count, as a big-endian `u64`.
fn len(n: usize) -> [u8; 8] {
    // usize is at most 64 bits on every target Rust supports.
    (n as u64).to_be_bytes()
}

/// The values of the cookies called `name`, across every `Cookie` header,
/// in order.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .filter_map(move |pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, v) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
            (!n.is_empty() && n == name.as_bytes()).then_some(v)
        })
}

/// Without the spaces and tabs around it.
fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn map(headers: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_bytes(value).expect("valid value"),
            );
        }
        map
    }

    fn material(credentials: &Credentials, headers: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::new();
        credentials.write(headers, |b| out.extend_from_slice(b));
        out
    }

    #[test]
    fn each_default_header_separates_callers() {
        let c = Credentials::new();
        for name in [
            "authorization",
            "proxy-authorization",
            "x-api-key",
            "api-key",
        ] {
            let one = material(&c, &map(&[(name, b"tenant1")]));
            let two = material(&c, &map(&[(name, b"tenant2")]));
            let none = material(&c, &map(&[]));
            let empty = material(&c, &map(&[(name, b"")]));
            assert_ne!(one, two, "{name}");
            assert_ne!(one, none, "{name}");
            assert_ne!(none, empty, "{name}: absent is not empty");
            assert_eq!(one, material(&c, &map(&[(name, b"tenant1")])), "{name}");
        }
    }

    #[test]
    fn the_exact_encoding() {
        let c = Credentials::none()
            .header(HeaderName::from_static("b"))
            .header(HeaderName::from_static("a"))
            .cookie("s");
        let got = material(&c, &map(&[("b", b"xy"), ("cookie", b"s=1; t=2; s=")]));
        let mut want = Vec::new();
        want.extend_from_slice(b"h");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(b"a");
        want.extend_from_slice(&0u64.to_be_bytes());
        want.extend_from_slice(b"h");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(b"b");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(b"xy");
        want.extend_from_slice(b"c");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(b"s");
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(b"1");
        want.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(got, want);
    }

    #[test]
    fn the_order_of_configuration_does_not_matter_and_repeats_are_one() {
        let ab = Credentials::none()
            .header(HeaderName::from_static("a"))
            .header(HeaderName::from_static("b"))
            .cookie("x")
            .cookie("y");
        let ba = Credentials::none()
            .header(HeaderName::from_static("b"))
            .header(HeaderName::from_static("a"))
            .header(HeaderName::from_static("a"))
            .cookie("y")
            .cookie("x")
            .cookie("y");
        assert_eq!(ab, ba);
        assert_eq!(Credentials::new().headers().len(), 4);
    }

    #[test]
    fn cookies_are_read_by_name_only_and_split_headers_are_one() {
        let c = Credentials::none().cookie("session");
        let one = material(&c, &map(&[("cookie", b"a=1; session=s1; b=2")]));
        let split = material(
            &c,
            &map(&[("cookie", b"a=1"), ("cookie", b"session=s1; b=3")]),
        );
        assert_eq!(one, split);
        assert_ne!(one, material(&c, &map(&[("cookie", b"session=s2")])));
        assert_ne!(
            material(&c, &map(&[])),
            material(&c, &map(&[("cookie", b"session=")])),
            "absent is not empty"
        );
        // Names are case-sensitive, and a prefix is not the name.
        let none = material(&c, &map(&[]));
        for other in [&b"Session=s1"[..], b"sessionid=s1", b"session", b"=s1"] {
            assert_eq!(none, material(&c, &map(&[("cookie", other)])), "{other:?}");
        }
        // Without cookies configured, cookies are never read.
        assert_eq!(
            material(&Credentials::new(), &map(&[])),
            material(&Credentials::new(), &map(&[("cookie", b"session=s1")]))
        );
    }

    #[test]
    fn select_copies_what_write_reads() {
        let c = Credentials::new().cookie("session");
        let headers = map(&[
            ("authorization", b"Bearer a"),
            ("x-api-key", b"k1"),
            ("x-api-key", b"k2"),
            ("cookie", b"session=s; _ga=1"),
            ("accept", b"*/*"),
        ]);
        let selected = c.select(&headers);
        assert_eq!(material(&c, &selected), material(&c, &headers));
        assert!(!selected.contains_key("accept"));
        assert!(Credentials::new().select(&map(&[])).is_empty());
        assert!(!Credentials::new().select(&headers).contains_key("cookie"));

        // Past 16 values the copy looks each name up instead: the same copy.
        let mut many = headers.clone();
        for i in 0..20 {
            many.append(
                HeaderName::from_bytes(format!("x-extra-{i}").as_bytes()).expect("a name"),
                "v".parse().expect("a value"),
            );
        }
        assert!(many.len() > 16);
        let selected = c.select(&many);
        assert_eq!(material(&c, &selected), material(&c, &headers));
        assert_eq!(selected.len(), 4);
    }

    proptest! {
        /// Two header sets write the same material only when they carry the
        /// same credential values.
        #[test]
        fn no_two_credential_sets_collide(
            a in proptest::collection::vec((0usize..3, proptest::collection::vec(32u8..127, 0..6)), 0..5),
            b in proptest::collection::vec((0usize..3, proptest::collection::vec(32u8..127, 0..6)), 0..5),
        ) {
            let names = ["authorization", "x-api-key", "cookie"];
            let build = |pairs: &[(usize, Vec<u8>)]| {
                let mut m = HeaderMap::new();
                for (n, v) in pairs {
                    m.append(names[*n], HeaderValue::from_bytes(v).expect("visible ASCII"));
                }
                m
            };
            let c = Credentials::none()
                .header(http::header::AUTHORIZATION)
                .header(X_API_KEY)
                .cookie("s");
            let (ma, mb) = (build(&a), build(&b));
            let same = ["authorization", "x-api-key"].iter().all(|n| {
                ma.get_all(*n).iter().eq(mb.get_all(*n).iter())
            }) && cookies(&ma, "s").eq(cookies(&mb, "s"));
            prop_assert_eq!(material(&c, &ma) == material(&c, &mb), same);
        }
    }
}
