//! The one JSON line on standard output, for a success or a [`kneo::Error`].

use std::io::Write;
use std::process::ExitCode;

use http::StatusCode;
use kneo::{Error, ErrorBody};
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
    body: Value,
}

impl<'a> Success<'a> {
    /// What a success response said; `body` as kneo classifies bodies.
    pub(crate) fn new(
        status: StatusCode,
        request_id: Option<&'a str>,
        idempotency_key: Option<&'a str>,
        attempts: u32,
        body: &ErrorBody,
    ) -> Self {
        Success {
            ok: true,
            status: status.as_u16(),
            request_id,
            idempotency_key,
            attempts,
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

/// Prints `line` as one line of JSON on standard output and returns `code`;
/// a failure to print is reported on standard error.
pub(crate) fn print(line: &impl Serialize, code: u8) -> ExitCode {
    let printed = serde_json::to_string(line)
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

/// Reports a usage error: one line on standard error, exit status 2.
pub(crate) fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}
