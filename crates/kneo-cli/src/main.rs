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
//! a usage error (what is wrong and the usage line on standard error,
//! nothing on standard output).
//! Everything else (retries, waits, timeouts, error mapping) is the library's:
//! this binary only parses arguments and prints.
//!
//! `kneo proxy --upstream URL` runs the gateway sidecar of `kneo-proxy`; see
//! [`proxy`] for its flags, output and signals.

mod args;
mod output;
mod proxy;
mod secs;
mod stack;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kneo::{Attempts, Client, Error, ErrorBody, RateLimit};

use args::{Cli, Command, RequestArgs};
use output::{Failure, Success};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print to standard output and succeed.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => return output::usage(&args::usage_message(&e)),
    };
    let args = match cli.command {
        Command::Request(args) => args,
        Command::Proxy(args) => return proxy::main(args),
    };
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
        Err(_) => return output::usage("the request could not be built from the arguments"),
    };
    let client = match Client::builder().layer(args.layer()).build() {
        Ok(client) => client,
        Err(e) => return failure(&e, e.attempts()),
    };
    let res = match client.request(req).await {
        Ok(res) => res,
        Err(e) => return failure(&e, e.attempts()),
    };

    let status = res.status();
    let attempts = res
        .extensions()
        .get::<Attempts>()
        .map_or(1, Attempts::count);
    let sent = client.sent(&res);
    let request_id = sent.reported_request_id(res.headers());
    let rate_limit = res.extensions().get::<RateLimit>().cloned();
    let body = match client.read_bytes(res).await {
        Ok(bytes) => ErrorBody::from_bytes(&bytes, false),
        Err(e) => return failure(&e, attempts),
    };
    let line = Success::new(
        status,
        request_id.as_deref(),
        sent.idempotency_key(),
        attempts,
        rate_limit.as_ref(),
        &body,
    );
    output::print(&line, 0)
}

/// Prints `err` and returns exit status 1.
fn failure(err: &Error, attempts: u32) -> ExitCode {
    output::print(&Failure::new(err, attempts), 1)
}
