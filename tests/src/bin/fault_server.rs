//! One instance of the fault workloads' server as its own process, so a test
//! can kill it mid-handler (issue 11, "Crash"): axum's `POST /charges` behind
//! kneo-server's `IdempotencyLayer` on a `RedisStore` shared with the other
//! instances. Prints `listening ADDR`, then `effect ID KEY` for every effect
//! (flushed before the response is sent) and `entered ID` when it stalls on
//! `--stall-id`.
//!
//! `fault_server --redis redis://127.0.0.1:6379/ --lease-ms 2000 [--stall-id N --stall-marker PATH]`

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kneo_server::{IdempotencyLayer, RedisStore};
use kneo_tests::faults::{Effects, FaultServer, Stall};
use tokio::net::TcpListener;

/// A fault-workload server instance.
#[derive(Debug, Parser)]
struct Args {
    /// The shared Redis.
    #[arg(long)]
    redis: String,
    /// The key prefix in Redis (the same for every instance).
    #[arg(long, default_value = "faults:")]
    prefix: String,
    /// The lease of an in-flight claim, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    lease_ms: u64,
    /// The logical request to stall on (first instance to create the marker).
    #[arg(long, requires = "stall_marker")]
    stall_id: Option<u64>,
    /// The marker directory the instances race to create.
    #[arg(long)]
    stall_marker: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let store = match RedisStore::builder(args.redis.as_str())
        .prefix(args.prefix)
        .connect()
        .await
    {
        Ok(store) => store,
        Err(e) => {
            eprintln!("fault_server: redis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let layer = IdempotencyLayer::new(store).lease(Duration::from_millis(args.lease_ms));
    let stall = args
        .stall_id
        .zip(args.stall_marker)
        .map(|(id, marker)| Stall { id, marker });
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fault_server: bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = FaultServer::serve(listener, layer, Arc::new(Effects::journaled()), stall).await;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {}", server.addr());
        let _ = out.flush();
    }
    // Runs until killed (its parent test kills it on drop).
    std::future::pending::<ExitCode>().await
}
