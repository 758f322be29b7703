//! The one JSON line on standard output, for a success or a [`kneo::Error`].

use std::io::Write;
use std::process::ExitCode;

use http::StatusCode;
use kneo::{Error, ErrorBody, RateLimit};
use serde::Serialize;
use serde_json::Value;

/// A success response, as printed.
#[derive(Debug, Serialize)]
pub(crate) struct Success<'a> {
    ok: bool,
    status: u16,
    request_id: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    attempts: u32,
    rate_limit: Option<RateLimitJson<'a>>,
    body: Value,
}

/// The parsed rate-limit headers of the last response, as printed.
#[derive(Debug, Serialize)]
pub(crate) struct RateLimitJson<'a> {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_after: Option<f64>,
    policy: Option<&'a str>,
}

impl<'a> RateLimitJson<'a> {
    fn new(rl: &'a RateLimit) -> Self {
        RateLimitJson {
            limit: rl.limit(),
            remaining: rl.remaining(),
            reset_after: rl.reset_after().map(|d| d.as_secs_f64()),
            policy: rl.policy(),
        }
    }
}

impl<'a> Success<'a> {
    /// What a success response said; `body` as kneo classifies bodies.
    pub(crate) fn new(
        status: StatusCode,
        request_id: Option<&'a str>,
        idempotency_key: Option<&'a str>,
        attempts: u32,
        rate_limit: Option<&'a RateLimit>,
        body: &ErrorBody,
    ) -> Self {
        Success {
            ok: true,
            status: status.as_u16(),
            request_id,
            idempotency_key,
            attempts,
            rate_limit: rate_limit.map(RateLimitJson::new),
            body: body_json(body),
        }
    }
}

/// A [`kneo::Error`], as printed.
#[derive(Debug, Serialize)]
pub(crate) struct Failure<'a> {
    ok: bool,
    kind: &'static str,
    code: &'a str,
    status: Option<u16>,
    message: &'a str,
    request_id: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    retry_after: Option<f64>,
    attempts: u32,
    rate_limit: Option<RateLimitJson<'a>>,
    body: Value,
}

impl<'a> Failure<'a> {
    /// Everything `err` says, with `attempts` requests sent.
    pub(crate) fn new(err: &'a Error, attempts: u32) -> Self {
        Failure {
            ok: false,
            kind: err.kind().as_str(),
            code: err.code(),
            status: err.status().map(|s| s.as_u16()),
            message: err.message(),
            request_id: err.request_id(),
            idempotency_key: err.idempotency_key(),
            retry_after: err.retry_after().map(|d| d.as_secs_f64()),
            attempts,
            rate_limit: err.rate_limit().map(RateLimitJson::new),
            body: body_json(err.body()),
        }
    }
}

/// JSON as is, text as a string, nothing as `null`.
fn body_json(body: &ErrorBody) -> Value {
    match body {
        ErrorBody::Json(v) => v.clone(),
        ErrorBody::Text(t) => Value::String(t.clone()),
        _ => Value::Null,
    }
}

/// serde_json's compact output, with every Unicode line break that JSON
/// allows raw inside strings (U+0085, U+2028, U+2029) written as an escape,
/// so a reader that splits on Unicode line breaks (Python's `splitlines`,
/// many log viewers) still sees one line. The JSON value is unchanged.
struct OneLine;

impl serde_json::ser::Formatter for OneLine {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // The usual case (an access log's ids and paths), checked a word at
        // a time: no character outside ASCII, nothing to look for.
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut rest = fragment;
        while let Some(at) = rest.find(['\u{85}', '\u{2028}', '\u{2029}']) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

/// `line` as one line of JSON.
pub(crate) fn to_line(line: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::new();
    write_line(&mut out, line)?;
    out.pop();
    // serde_json writes UTF-8 only.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Appends `line` to `out` as [`to_line`] makes it, and a newline; on an
/// error `out` is as it was.
pub(crate) fn write_line(out: &mut Vec<u8>, line: &impl Serialize) -> serde_json::Result<()> {
    let len = out.len();
    let written = line.serialize(&mut serde_json::Serializer::with_formatter(
        &mut *out, OneLine,
    ));
    match written {
        Ok(()) => {
            out.push(b'\n');
            Ok(())
        }
        Err(e) => {
            out.truncate(len);
            Err(e)
        }
    }
}

/// Prints `line` as one line of JSON on standard output and returns `code`;
/// a failure to print is reported on standard error.
pub(crate) fn print(line: &impl Serialize, code: u8) -> ExitCode {
    let printed = to_line(line)
        .map_err(std::io::Error::from)
        .and_then(|json| writeln!(std::io::stdout().lock(), "{json}"));
    match printed {
        Ok(()) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: cannot write the result: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a usage error: `error: MESSAGE` on standard error (one line, or
/// for an argument error that line and the usage), exit status 2.
pub(crate) fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_line_breaks_are_escaped_and_round_trip() {
        let value = serde_json::json!({"m": "a\u{2028}b\u{2029}c\u{85}d\ne", "k": ["\u{2028}"]});
        let line = to_line(&value).expect("serializes");
        assert_eq!(line.lines().count(), 1);
        assert!(
            !line.contains(['\u{85}', '\u{2028}', '\u{2029}', '\n']),
            "{line}"
        );
        assert!(
            line.contains("\\u2028") && line.contains("\\u0085"),
            "{line}"
        );
        let back: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(back, value);
    }
}
