//! The command line: clap's derive types, and parsers that turn every bad
//! value into a usage error before anything is sent.

use std::io::Read;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use kneo::ClientLayer;

use crate::stack::StackArgs;

/// `kneo`: HTTP API calls through the kneo stack.
#[derive(Debug, Parser)]
#[command(name = "kneo", version, about, arg_required_else_help = false)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Send one request (retried as kneo sees fit) and print the outcome as one JSON line.
    ///
    /// Exit status: 0 on success, 1 when the outcome is an error, 2 for a usage error.
    Request(RequestArgs),
    /// Run a gateway sidecar: plain HTTP in, the kneo stack out, upstream answers passed through.
    ///
    /// Prints one JSON line once listening, then one JSON access-log line per
    /// answered request: request_id, upstream_request_id (only when the
    /// upstream answered with an X-Request-ID of its own), method, path,
    /// status, attempts, upstream_ms and outcome (upstream, unreachable,
    /// timeout, overloaded, bad_request, rate_limited, replayed, idempotency).
    Proxy(crate::proxy::ProxyArgs),
}

/// The options of `kneo request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The absolute http(s) URL. Credentials in it (user:password@) are sent
    /// as Basic auth, as curl does, and never printed.
    #[arg(value_parser = parse_url)]
    pub(crate) url: Uri,

    /// The method [default: GET, or POST when --data is given].
    #[arg(short = 'X', long, value_parser = parse_method)]
    pub(crate) method: Option<Method>,

    /// A request header; repeatable. A caller's X-Request-ID or Idempotency-Key is kept.
    #[arg(short = 'H', long = "header", value_name = "'Name: value'", value_parser = parse_header)]
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,

    /// The request body; @path reads a file, @- standard input. Set Content-Type with -H.
    #[arg(short, long, value_name = "BODY")]
    pub(crate) data: Option<String>,

    #[command(flatten)]
    pub(crate) stack: StackArgs,

    /// Log retries (`kneo::retry` at INFO) on standard error.
    #[arg(short, long)]
    pub(crate) verbose: bool,
}

impl RequestArgs {
    /// The request body: `--data` as given, or the file or standard input it names.
    pub(crate) fn body(&self) -> Result<Bytes, String> {
        let Some(data) = &self.data else {
            return Ok(Bytes::new());
        };
        match data.strip_prefix('@') {
            Some("-") => {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("cannot read the body from standard input: {e}"))?;
                Ok(Bytes::from(buf))
            }
            Some(path) => std::fs::read(path)
                .map(Bytes::from)
                .map_err(|e| format!("cannot read the body from {path:?}: {e}")),
            None => Ok(Bytes::from(data.clone())),
        }
    }

    /// The stack configuration the options ask for.
    pub(crate) fn layer(&self) -> ClientLayer {
        self.stack.layer()
    }

    /// The request: method, URL, headers (repeats appended) and `body`.
    pub(crate) fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>, http::Error> {
        let method = match (&self.method, &self.data) {
            (Some(method), _) => method.clone(),
            (None, Some(_)) => Method::POST,
            (None, None) => Method::GET,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(self.url.clone())
            .body(Full::new(body))?;
        for (name, value) in &self.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        Ok(req)
    }
}

/// What a usage error prints: one line saying what is wrong and with which
/// flag, never the value given (a URL or a header may hold a secret), then
/// clap's usage line (names only) and where to read more.
pub(crate) fn usage_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let usage = rendered
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .map(|l| l.trim_end().to_owned())
        .or_else(command_usage);
    let usage = usage.as_deref();
    let problem = problem_line(e);
    match usage {
        Some(usage) => format!("{problem}\n\n{usage}\n\nFor more information, try '--help'."),
        None => problem,
    }
}

/// The usage line of the command named on the command line (`kneo proxy …`),
/// for the errors clap renders without one.
fn command_usage() -> Option<String> {
    use clap::CommandFactory;
    let name = std::env::args().nth(1)?;
    let mut cli = Cli::command();
    // Built, the subcommand's usage names the binary too (`kneo proxy …`).
    cli.build();
    let command = cli.find_subcommand_mut(&name)?;
    Some(command.render_usage().to_string().trim_end().to_owned())
}

/// The first line of [`usage_message`].
fn problem_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match e.kind() {
        // The names of the missing arguments: ours, never a caller's value.
        ErrorKind::MissingRequiredArgument => match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::Strings(names)) if !names.is_empty() => format!(
                "the following required arguments were not provided: {}",
                names.join(", ")
            ),
            _ => "a required argument was not provided (see --help)".to_owned(),
        },
        ErrorKind::InvalidValue if context(ContextKind::InvalidValue) == Some("") => {
            let arg = context(ContextKind::InvalidArg).unwrap_or("an argument");
            format!("a value is required for {arg} but none was supplied")
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let arg = context(ContextKind::InvalidArg).unwrap_or("an argument");
            match std::error::Error::source(e) {
                Some(reason) => format!("invalid value for {arg}: {reason}"),
                None => format!("invalid value for {arg}"),
            }
        }
        ErrorKind::UnknownArgument => match context(ContextKind::InvalidArg) {
            // A flag's name, never anything after `=`.
            Some(flag) if flag.starts_with('-') => {
                let name = flag.split('=').next().unwrap_or(flag);
                format!("unexpected argument {name} (see --help)")
            }
            _ => "unexpected extra argument (see --help)".to_owned(),
        },
        ErrorKind::InvalidSubcommand => "unknown command (see --help)".to_owned(),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "a command is required: request or proxy".to_owned()
        }
        // Every other kind names arguments, not values (a conflict, a
        // repeated flag): clap's first line is safe to show.
        _ => {
            let rendered = e.render().to_string();
            let line = rendered.lines().find(|l| !l.trim().is_empty());
            line.unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_owned()
        }
    }
}

/// An absolute `http` or `https` URL with a host.
fn parse_url(s: &str) -> Result<Uri, String> {
    // No message quotes the URL: it may carry a password or a key.
    let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if cfg!(feature = "rustls") => {}
        Some("https") => {
            return Err("https needs kneo-cli built with the `rustls` feature".to_owned());
        }
        Some(_) => return Err("the scheme must be http or https".to_owned()),
        None => return Err("the URL must be absolute (http://host/...)".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    Ok(uri)
}

/// A method token, upper-cased (`get` is `GET`).
fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| "not a valid HTTP method".to_owned())
}

/// `Name: value`, both checked as HTTP requires. No message quotes what was
/// given: a mistyped `Authorization` header holds a token.
fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| "a header is 'Name: value' and this has no colon".to_owned())?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| "the header name is not a valid HTTP header name".to_owned())?;
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("http://127.0.0.1:8080/x?y=1").is_ok());
        for bad in [
            "not a url",
            "/relative",
            "ftp://host/x",
            "http://",
            "localhost:80",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            parse_url("https://example.com").is_ok(),
            cfg!(feature = "rustls")
        );
    }

    #[test]
    fn headers() {
        let (name, value) = parse_header("X-Request-ID:  order-7 ").expect("valid");
        assert_eq!(name, "x-request-id");
        assert_eq!(value, "order-7");
        assert_eq!(parse_header("A: b: c").expect("valid").1, "b: c");
        assert_eq!(parse_header("Empty:").expect("valid").1, "");
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert!(parse_header(": x").is_err());
        assert!(parse_header("X: a\nb").is_err());
    }

    #[test]
    fn methods() {
        assert_eq!(parse_method("patch"), Ok(Method::PATCH));
        assert!(parse_method("GE T").is_err());
    }
}
