//! The ledger app ([`kneo_tests::ledger`]) as its own process, so a test can
//! kill it between a handler's insert and the commit. Prints
//! `listening ADDR`, then `inserted KEY` (flushed) for every request sent
//! with `x-stall: 1`, which then never answers.
//!
//! `pg_server --postgres postgres://postgres@127.0.0.1:PORT/postgres`

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kneo_server::transactional::Transactional;
use kneo_tests::ledger::{self, Ledger};
use tokio::net::TcpListener;

/// A ledger server instance.
#[derive(Debug, Parser)]
struct Args {
    /// The database.
    #[arg(long)]
    postgres: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let pool = match sqlx::PgPool::connect(&args.postgres).await {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("pg_server: cannot connect: {e}");
            return ExitCode::FAILURE;
        }
    };
    ledger::migrate(&pool).await;
    let app = Ledger::new(|key| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "inserted {key}");
        let _ = out.flush();
    })
    .router(Transactional::new(pool));
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("pg_server: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening {addr}");
        let _ = std::io::stdout().flush();
    }
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_server: {e}");
            ExitCode::FAILURE
        }
    }
}
