//! The `kneo` command: one HTTP request through [`kneo::Client`] and the
//! kneo layers, its outcome printed as exactly one JSON line on standard
//! output.
//!
//! ```text
//! $ kneo request http://127.0.0.1:8080/runs/7
//! {"ok":false,"kind":"not_found","code":"not_found","status":404,...}
//! ```
//!
//! Exit status: 0 on success, 1 when the outcome is a [`kneo::Error`], 2 for
//! a usage error (one line on standard error, nothing on standard output).
//! Everything else (retries, waits, timeouts, error mapping) is the library's:
//! this binary only parses arguments and prints.

mod args;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kneo::core::{is_valid_request_id, DEFAULT_BODY_CAP};
use kneo::idempotency::IdempotencyKey;
use kneo::request_id::RequestId;
use kneo::{Attempts, Client, Error, ErrorBody};

use args::{Cli, Command, RequestArgs};
use output::{Failure, Success};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print to standard output and succeed.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let line = rendered.lines().find(|l| !l.trim().is_empty());
            let line = line.unwrap_or("invalid arguments");
            return output::usage(line.trim_start_matches("error: "));
        }
    };
    let Command::Request(args) = cli.command;
    let body = match args.body() {
        Ok(body) => body,
        Err(message) => return output::usage(&message),
    };
    init_tracing(args.verbose);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(request(&args, body)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error: kneo's warnings, and with `verbose` the retry log.
fn init_tracing(verbose: bool) {
    let filter = if verbose {
        "warn,kneo::retry=info"
    } else {
        "warn"
    };
    // Fails only when a subscriber is already set, which `main` never does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Sends the request and prints its outcome.
async fn request(args: &RequestArgs, body: bytes::Bytes) -> ExitCode {
    let req = match args.request(body) {
        Ok(req) => req,
        Err(e) => return output::usage(&e.to_string()),
    };
    let client = match Client::builder().layer(args.layer()).build() {
        Ok(client) => client,
        Err(e) => return failure(&e, e.attempts()),
    };
    let method = req.method().clone();
    let res = match client.request(req).await {
        Ok(res) => res,
        Err(e) => return failure(&e, e.attempts()),
    };

    let status = res.status();
    let attempts = res
        .extensions()
        .get::<Attempts>()
        .map_or(1, Attempts::count);
    let sent = kneo::client::sent_from_response(&method, &res);
    let request_id = res
        .headers()
        .get(kneo::core::X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .or_else(|| {
            res.extensions()
                .get::<RequestId>()
                .map(RequestId::header_value)
        })
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let key = res
        .extensions()
        .get::<IdempotencyKey>()
        .map(|k| k.as_str().to_owned());

    // The attempt timeout covers the response head; the body gets as long.
    let read = kneo::client::read_body(res.into_body(), DEFAULT_BODY_CAP);
    let body = match tokio::time::timeout(args.timeout, read).await {
        Ok(Ok((bytes, truncated))) => ErrorBody::from_bytes(&bytes, truncated),
        Ok(Err(e)) => return failure(&Error::network(e, sent), attempts),
        Err(_) => return failure(&Error::timeout(args.timeout, sent), attempts),
    };
    let line = Success::new(
        status,
        request_id.as_deref(),
        key.as_deref(),
        attempts,
        &body,
    );
    output::print(&line, 0)
}

/// Prints `err` and returns exit status 1.
fn failure(err: &Error, attempts: u32) -> ExitCode {
    output::print(&Failure::new(err, attempts), 1)
}
