//! The ledger app ([`kneo_tests::ledger`]) as its own process, so a test can
//! kill it between a handler's insert and the commit. Prints
//! `listening ADDR`, then `inserted KEY` (flushed) for every request sent
//! with `x-stall: 1`, which then never answers.
//!
//! `pg_server --postgres postgres://postgres@127.0.0.1:PORT/postgres`
//!
//! For the kill workload (`kneo_tests::faults::pg_kills`):
//!
//! - `--port P` listens on `P` (a restarted instance takes its place);
//! - `--stall-dir DIR` makes a request sent with `x-kill-at: POINT` stall at
//!   that point the first time its key gets there (markers in `DIR`, shared
//!   by every instance), printing `stalled POINT KEY` (flushed);
//! - `--redis URL` serves the ledger without the transaction: the handler
//!   inserts with autocommit and the records are in a `RedisStore` (lease
//!   `--lease-ms`), the design the transactional layer replaces.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kneo_server::transactional::Transactional;
use kneo_server::{IdempotencyLayer, RedisStore};
use kneo_tests::ledger::{self, KillPoints, Ledger};
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

/// A ledger server instance.
#[derive(Debug, Parser)]
struct Args {
    /// The database.
    #[arg(long)]
    postgres: String,
    /// The port to listen on (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The pool's connections.
    #[arg(long, default_value_t = 10)]
    max_connections: u32,
    /// Stall `x-kill-at` requests once per key and point, with markers here.
    #[arg(long)]
    stall_dir: Option<PathBuf>,
    /// Records in this Redis, and rows inserted with autocommit, instead of
    /// the transactional layer.
    #[arg(long)]
    redis: Option<String>,
    /// With `--redis`: the lease of an in-flight claim, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    lease_ms: u64,
}

/// One line on stdout, flushed.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let pool = match PgPoolOptions::new()
        .max_connections(args.max_connections)
        .connect(&args.postgres)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("pg_server: cannot connect: {e}");
            return ExitCode::FAILURE;
        }
    };
    ledger::migrate(&pool).await;
    let mut app = Ledger::new(|key| say(&format!("inserted {key}")));
    if let Some(dir) = args.stall_dir {
        app = app.with_kill_points(KillPoints::new(dir, |point, key| {
            say(&format!("stalled {} {key}", point.as_str()));
        }));
    }
    let router = match args.redis {
        Some(url) => {
            let store = match RedisStore::builder(url.as_str()).connect().await {
                Ok(store) => store,
                Err(e) => {
                    eprintln!("pg_server: redis: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let layer = IdempotencyLayer::new(store).lease(Duration::from_millis(args.lease_ms));
            app.autocommit_router(pool, layer)
        }
        None => app.router(Transactional::new(pool)),
    };
    let listener = match TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("pg_server: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        say(&format!("listening {addr}"));
    }
    match axum::serve(listener, router).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_server: {e}");
            ExitCode::FAILURE
        }
    }
}
