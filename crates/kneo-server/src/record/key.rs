//! The `Idempotency-Key` header, parsed once, and the [`RecordKey`] a store
//! files a request under.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use kneo_core::IDEMPOTENCY_KEY;

use super::fingerprint::hex;
use super::scope::Scope;

/// The longest key accepted, in characters (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// More than one `Idempotency-Key` header.
    Repeated,
    /// Empty after unquoting.
    Empty,
    /// Longer than [`MAX_KEY_LEN`].
    TooLong,
    /// A character outside visible ASCII, or a malformed quoted string.
    Malformed,
}

impl KeyError {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            KeyError::Repeated => "The request carries more than one Idempotency-Key header.",
            KeyError::Empty => "The Idempotency-Key header is empty.",
            KeyError::TooLong => "The Idempotency-Key is longer than 255 characters.",
            KeyError::Malformed => {
                "The Idempotency-Key must be 1 to 255 visible ASCII characters, or a quoted string (spaces allowed, parameters ignored)."
            }
        }
    }
}

/// Reads the `Idempotency-Key`: `Ok(None)` when absent, the key when it is a
/// structured-field string (`"abc"`, RFC 8941 §3.3.3: printable ASCII, spaces
/// included, with parameters after it allowed and ignored, §3.1.2) or a bare
/// token (`abc`) of visible ASCII, 1 to 255 characters after unquoting.
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<Arc<str>>, KeyError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let raw = trim_ows(value.as_bytes());
    let unquoted;
    let (key, allowed): (&[u8], fn(&u8) -> bool) = match raw.first() {
        Some(b'"') => {
            unquoted = unquote(raw)?;
            (&unquoted, |b| (0x20..=0x7e).contains(b))
        }
        _ => (raw, u8::is_ascii_graphic),
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.iter().all(allowed) {
        return Err(KeyError::Malformed);
    }
    // Visible ASCII is UTF-8.
    std::str::from_utf8(key)
        .map(|k| Some(Arc::from(k)))
        .map_err(|_| KeyError::Malformed)
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 8941 §4.2.5: a `"`-delimited string where `\` escapes only `"` and
/// `\`; after the closing quote, only parameters (§4.2.3.2), which are
/// checked and ignored.
fn unquote(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 1;
    while let Some(&b) = raw.get(i) {
        i += 1;
        match b {
            b'\\' => match raw.get(i) {
                Some(&c @ (b'"' | b'\\')) => {
                    out.push(c);
                    i += 1;
                }
                _ => return Err(KeyError::Malformed),
            },
            b'"' => {
                return if parameters(&raw[i..]) {
                    Ok(out)
                } else {
                    Err(KeyError::Malformed)
                };
            }
            0x20..=0x7e => out.push(b),
            _ => return Err(KeyError::Malformed),
        }
    }
    Err(KeyError::Malformed)
}

/// RFC 8941 parameters: `*( ";" *SP key [ "=" bare-item ] )`, where a key
/// is `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )` and a
/// bare item is a string, or a token, number, boolean or byte sequence
/// (checked for their characters only: the values are ignored).
fn parameters(mut rest: &[u8]) -> bool {
    while let [b';', after @ ..] = rest {
        rest = after;
        while let [b' ', after @ ..] = rest {
            rest = after;
        }
        let key_len = rest
            .iter()
            .position(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'))
            .unwrap_or(rest.len());
        if !matches!(rest.first(), Some(b'a'..=b'z' | b'*')) {
            return false;
        }
        rest = &rest[key_len..];
        if let [b'=', after @ ..] = rest {
            rest = after;
            let value_len = match rest.first() {
                Some(b'"') => match string_len(rest) {
                    Some(len) => len,
                    None => return false,
                },
                _ => rest
                    .iter()
                    .position(|&b| b == b';' || !b.is_ascii_graphic() || b == b'"')
                    .unwrap_or(rest.len()),
            };
            if value_len == 0 {
                return false;
            }
            rest = &rest[value_len..];
        }
    }
    rest.is_empty()
}

/// The length of the sf-string at the start of `raw`, closing quote included.
fn string_len(raw: &[u8]) -> Option<usize> {
    let mut i = 1;
    while let Some(&b) = raw.get(i) {
        i += 1;
        match b {
            b'\\' => {
                if !matches!(raw.get(i), Some(b'"' | b'\\')) {
                    return None;
                }
                i += 1;
            }
            b'"' => return Some(i),
            0x20..=0x7e => {}
            _ => return None,
        }
    }
    None
}

/// Where a store files a request: the caller's [`Scope`] and the key.
///
/// Two callers with different scopes never see each other's records, even
/// with the same key. The scope is a digest, so a credential it was made from
/// is never stored.
///
/// ```
/// use kneo_server::idempotency::{RecordKey, Scope};
///
/// let alice = RecordKey::new(Scope::of(b"Bearer alice"), "order-1");
/// let bob = RecordKey::new(Scope::of(b"Bearer bob"), "order-1");
/// assert_ne!(alice, bob);
/// assert_eq!(alice.key(), "order-1");
/// assert!(!alice.to_string().contains("alice"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    scope: Scope,
    // Shared: the layer, the store's index and a drop guard all hold it.
    key: Arc<str>,
}

impl RecordKey {
    /// The record key for `key` in `scope`.
    pub fn new(scope: Scope, key: &str) -> Self {
        RecordKey {
            scope,
            key: key.into(),
        }
    }

    pub(crate) fn from_shared(scope: Scope, key: Arc<str>) -> Self {
        RecordKey { scope, key }
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The idempotency key as the client sent it (unquoted).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key, shared.
    pub(crate) fn shared_key(&self) -> Arc<str> {
        self.key.clone()
    }
}

/// `<scope as hex>:<key>`, the form stores use as a name (Redis key suffix).
impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", hex(self.scope.as_bytes()), self.key)
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordKey")
            .field("scope", &self.scope)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(values: &[&[u8]]) -> Result<Option<String>, KeyError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                IDEMPOTENCY_KEY,
                HeaderValue::from_bytes(v).expect("test value"),
            );
        }
        parse(&headers).map(|k| k.map(|k| k.to_string()))
    }

    #[test]
    fn table() {
        let long = "k".repeat(255);
        let too_long = "k".repeat(256);
        let quoted_long = format!("\"{long}\"");
        type Case<'a> = (&'a [&'a [u8]], Result<Option<&'a str>, KeyError>);
        let cases: &[Case<'_>] = &[
            (&[], Ok(None)),
            (&[b"8e03978e-40d5-43e8"], Ok(Some("8e03978e-40d5-43e8"))),
            (&[b"\"8e03978e-40d5-43e8\""], Ok(Some("8e03978e-40d5-43e8"))),
            (&[b"  abc\t"], Ok(Some("abc"))),
            (&[br#""a\"b\\c""#], Ok(Some(r#"a"b\c"#))),
            (&[long.as_bytes()], Ok(Some(long.as_str()))),
            (&[quoted_long.as_bytes()], Ok(Some(long.as_str()))),
            (&[too_long.as_bytes()], Err(KeyError::TooLong)),
            (&[b""], Err(KeyError::Empty)),
            (&[b"\"\""], Err(KeyError::Empty)),
            (&[b"a", b"a"], Err(KeyError::Repeated)),
            (&[b"a b"], Err(KeyError::Malformed)),
            // RFC 8941: a string may hold spaces, and carry parameters.
            (&[b"\"a b\""], Ok(Some("a b"))),
            (&[b"\"abc\";p=1"], Ok(Some("abc"))),
            (&[b"\"abc\"; p=1;flag;s=\"x;y\";n=-1.5"], Ok(Some("abc"))),
            (&[b"\"abc"], Err(KeyError::Malformed)),
            (&[b"\"abc\" ;p=1"], Err(KeyError::Malformed)),
            (&[b"\"abc\";P=1"], Err(KeyError::Malformed)),
            (&[b"\"abc\";p="], Err(KeyError::Malformed)),
            (&[b"\"abc\";p=\"x"], Err(KeyError::Malformed)),
            (&[b"\"abc\"x"], Err(KeyError::Malformed)),
            (&[br#""a\nb""#], Err(KeyError::Malformed)),
            (&[b"caf\xc3\xa9"], Err(KeyError::Malformed)),
        ];
        for (values, expected) in cases {
            let expected = (*expected).map(|o| o.map(str::to_owned));
            assert_eq!(key(values), expected, "{values:?}");
        }
    }
}
