//! Reading an RFC 9457 problem details object from an error response.

use http::StatusCode;
use serde_json::{Map, Value};

/// The `application/problem+json` media type.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An [RFC 9457] problem details object taken from an error response.
///
/// Members of the wrong JSON type are ignored (RFC 9457 §3.1), and
/// [`status`](Problem::status) is always the HTTP status of the response,
/// whatever the body claims. Extension members are kept in
/// [`extensions`](Problem::extensions).
///
/// [RFC 9457]: https://www.rfc-editor.org/rfc/rfc9457
///
/// ```
/// use http::StatusCode;
/// use kneo_core::Problem;
///
/// let body = serde_json::json!({
///     "type": "https://example.com/out-of-credit",
///     "title": "You do not have enough credit.",
///     "status": 500,
///     "detail": 42,
///     "balance": 30
/// });
/// let p = Problem::from_json(body.as_object().unwrap(), StatusCode::FORBIDDEN);
/// assert_eq!(p.status, StatusCode::FORBIDDEN);
/// assert_eq!(p.detail, None); // wrong type, ignored
/// assert_eq!(p.extensions["balance"], 30);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Problem {
    /// A URI reference naming the problem type; `about:blank` when absent.
    pub r#type: String,
    /// A short, human-readable summary of the problem type.
    pub title: Option<String>,
    /// The HTTP status of the response (the body's `status` member never overrides it).
    pub status: StatusCode,
    /// A human-readable explanation of this occurrence.
    pub detail: Option<String>,
    /// A URI reference identifying this occurrence.
    pub instance: Option<String>,
    /// Every member that is not one of the five above (e.g. `code`, `errors`).
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// Builds a problem from a JSON object and the response's HTTP status.
    pub fn from_json(object: &Map<String, Value>, status: StatusCode) -> Self {
        let string = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
        let extensions = object
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "type" | "title" | "status" | "detail" | "instance"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Problem {
            r#type: string("type").unwrap_or_else(|| "about:blank".to_owned()),
            title: string("title"),
            status,
            detail: string("detail"),
            instance: string("instance"),
            extensions,
        }
    }
}
