//! The error response body, bounded.

use std::fmt;

use serde_json::Value;

/// The default cap on how much of an error body is kept: 64 KiB.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

/// The body of an error response as kneo kept it: parsed JSON when it parsed,
/// else text (lossy UTF-8), else empty.
///
/// Bodies are read up to a cap (default [`DEFAULT_BODY_CAP`]); a body that was
/// cut short is never parsed as JSON and reports
/// [`Error::body_truncated`](crate::Error::body_truncated).
#[derive(Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum ErrorBody {
    /// No body, or no response at all.
    #[default]
    Empty,
    /// The body parsed as JSON.
    Json(Value),
    /// The body as text (invalid UTF-8 replaced).
    Text(String),
}

impl ErrorBody {
    /// Classifies raw body bytes. `truncated` bodies are kept as text.
    pub fn from_bytes(bytes: &[u8], truncated: bool) -> Self {
        if bytes.is_empty() {
            return ErrorBody::Empty;
        }
        if !truncated {
            if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
                return ErrorBody::Json(value);
            }
        }
        ErrorBody::Text(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The JSON value, when the body was JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            ErrorBody::Json(v) => Some(v),
            _ => None,
        }
    }

    /// The text, when the body was not JSON.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ErrorBody::Text(t) => Some(t),
            _ => None,
        }
    }

    /// `true` when there was no body.
    pub fn is_empty(&self) -> bool {
        matches!(self, ErrorBody::Empty)
    }
}

/// Never prints the content: bodies may echo secrets back.
impl fmt::Debug for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorBody::Empty => f.write_str("Empty"),
            ErrorBody::Json(_) => f.write_str("Json(..)"),
            ErrorBody::Text(t) => write!(f, "Text({} bytes)", t.len()),
        }
    }
}
