//! Path hygiene: the one rule for what a caller's path may be before it is
//! joined to the upstream's prefix, so that nothing reaches the upstream
//! outside the prefix the operator exposed.
//!
//! Most upstream frameworks resolve `..` (and often `%2e%2e`, `..;`) after
//! routing through the proxy; forwarded as they came, `/api/../admin` would
//! reach `/admin`. So, as nginx does before `proxy_pass`:
//!
//! 1. A path with an encoded slash or backslash (`%2f`, `%5c`) or a raw
//!    backslash is refused: an upstream may decode it into a separator
//!    after this check.
//! 2. Runs of `/` are merged.
//! 3. Dot-segments are resolved (RFC 3986 §5.2.4): `.` and `..`, raw or
//!    percent-encoded in any mix (`%2e`, `.%2E`), and with path parameters
//!    (`..;x`, which Tomcat-style servers read as `..`).
//! 4. A `..` that would climb above the root is refused, not dropped: no
//!    honest client sends one.
//!
//! The query is not touched. A refused path is answered `400` by the proxy.
//!
//! ```
//! use kneo_proxy::path::clean;
//!
//! assert_eq!(clean("/runs/7").unwrap(), "/runs/7");
//! assert_eq!(clean("/a/./b//c/../d").unwrap(), "/a/b/d");
//! assert_eq!(clean("/a/%2e%2E/b").unwrap(), "/b");
//! assert!(clean("/../admin").is_err());
//! assert!(clean("/a/..%2fadmin").is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// An encoded slash or backslash, or a raw backslash.
    EncodedSeparator,
    /// A `..` above the root.
    AboveRoot,
    /// Not a valid URI once joined to the prefix.
    Invalid,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the request target must be an absolute path (/…) or an absolute URL",
            PathError::EncodedSeparator => {
                "the path holds an encoded slash or backslash, which an upstream might decode into a separator"
            }
            PathError::AboveRoot => "the path climbs above the root with '..'",
            PathError::Invalid => "the request target is not a valid URI path",
        })
    }
}

impl std::error::Error for PathError {}

/// `path` (no query) with its dot-segments resolved and its slashes merged,
/// or why it cannot be forwarded; see the [module docs](self). Borrowed when
/// nothing changed, the common case.
pub fn clean(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') || has_encoded_separator(path) {
        return Err(PathError::EncodedSeparator);
    }
    let segments = path[1..].split('/');
    let needs_work = path.contains("//") || path[1..].split('/').any(|s| dot_segment(s).is_some());
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let count = path[1..].split('/').count();
    for (i, segment) in segments.enumerate() {
        let last = i + 1 == count;
        match dot_segment(segment) {
            Some(Dots::One) => {
                if last {
                    // `/a/.` is `/a/`.
                    out.push("");
                }
            }
            Some(Dots::Two) => {
                // Drop the empty segment a trailing slash left, then one real one.
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if last {
                    out.push("");
                }
            }
            // Merge runs of `/` (an empty segment), but keep a trailing slash.
            None if segment.is_empty() && !last => {}
            None => out.push(segment),
        }
    }
    let mut cleaned = String::with_capacity(path.len());
    for segment in &out {
        cleaned.push('/');
        cleaned.push_str(segment);
    }
    if cleaned.is_empty() {
        cleaned.push('/');
    }
    Ok(Cow::Owned(cleaned))
}

enum Dots {
    One,
    Two,
}

/// Whether a segment is `.` or `..`, decoding `%2e` and ignoring `;params`.
fn dot_segment(segment: &str) -> Option<Dots> {
    let name = segment.split(';').next().unwrap_or(segment);
    let mut dots = 0;
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return None,
        }
        dots += 1;
    }
    match dots {
        1 => Some(Dots::One),
        2 => Some(Dots::Two),
        _ => None,
    }
}

fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/runs/7", Ok("/runs/7")),
            ("/runs/7/", Ok("/runs/7/")),
            ("/a.b/c..d/...", Ok("/a.b/c..d/...")),
            ("/a;v=1/b", Ok("/a;v=1/b")),
            ("/a//b", Ok("/a/b")),
            ("//a///b//", Ok("/a/b/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/.", Ok("/a/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/%2e/b", Ok("/a/b")),
            ("/a/%2e%2e/b", Ok("/b")),
            ("/a/.%2E/b", Ok("/b")),
            ("/a/%2E./b", Ok("/b")),
            ("/a/..;x/b", Ok("/b")),
            ("/a/b//../c", Ok("/a/c")),
            ("/..", Err(PathError::AboveRoot)),
            ("/../admin", Err(PathError::AboveRoot)),
            ("/%2e%2e/admin", Err(PathError::AboveRoot)),
            ("/a/../../admin", Err(PathError::AboveRoot)),
            ("/a/%2e%2e/%2E%2E/admin", Err(PathError::AboveRoot)),
            ("/..;/admin", Err(PathError::AboveRoot)),
            ("//../admin", Err(PathError::AboveRoot)),
            ("/a/..%2fadmin", Err(PathError::EncodedSeparator)),
            ("/a%2F..%2F..%2Fadmin", Err(PathError::EncodedSeparator)),
            ("/a/%5c../admin", Err(PathError::EncodedSeparator)),
            ("/a\\..\\admin", Err(PathError::EncodedSeparator)),
            ("admin", Err(PathError::NotAbsolute)),
            ("", Err(PathError::NotAbsolute)),
        ];
        for (path, want) in cases {
            let got = clean(path);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{path:?}");
        }
    }

    #[test]
    fn an_unchanged_path_is_borrowed() {
        assert!(matches!(clean("/runs/7?x"), Ok(Cow::Borrowed(_))));
    }
}
