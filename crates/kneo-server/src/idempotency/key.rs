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
                "The Idempotency-Key must be 1 to 255 visible ASCII characters, bare or as a quoted string."
            }
        }
    }
}

/// Reads the `Idempotency-Key`: `Ok(None)` when absent, the key when it is a
/// structured-field string (`"abc"`) or a bare token (`abc`) of 1 to 255
/// visible ASCII characters after unquoting.
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
    let key: &[u8] = match raw.first() {
        Some(b'"') => {
            unquoted = unquote(raw)?;
            &unquoted
        }
        _ => raw,
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.iter().all(u8::is_ascii_graphic) {
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

/// RFC 8941 §4.2.5: a `"`-delimited string where `\` escapes only `"` and `\`;
/// nothing may follow the closing quote (no parameters).
fn unquote(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().skip(1);
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(c),
                _ => return Err(KeyError::Malformed),
            },
            b'"' => {
                return if bytes.next().is_none() {
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
            (&[b"\"a b\""], Err(KeyError::Malformed)),
            (&[b"\"abc"], Err(KeyError::Malformed)),
            (&[b"\"abc\";p=1"], Err(KeyError::Malformed)),
            (&[br#""a\nb""#], Err(KeyError::Malformed)),
            (&[b"caf\xc3\xa9"], Err(KeyError::Malformed)),
        ];
        for (values, expected) in cases {
            let expected = (*expected).map(|o| o.map(str::to_owned));
            assert_eq!(key(values), expected, "{values:?}");
        }
    }
}
