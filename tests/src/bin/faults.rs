//! The fault soak: `cargo run -p kneo-tests --bin faults -- --requests 50000
//! --fault-rate 0.3 --seed S`. Runs the workloads of `tests/tests/faults.rs`
//! (and workload 4, `crates/kneo-cli/tests/faults.rs`) at any size, prints
//! the figures, and exits 1 on any duplicate or other violation.
//!
//! Workload 4 runs the real `kneo` binary as the proxy: by default the one
//! next to this executable, so build it first (`cargo build -p kneo-cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kneo_tests::faults::{run, Options, Workload};

/// Exactly-once under injected faults, as a soak.
#[derive(Debug, Parser)]
struct Args {
    /// Logical requests per workload.
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    /// The share of connections the relay faults (0.0..=1.0).
    #[arg(long, default_value_t = 0.3)]
    fault_rate: f64,
    /// The relay's seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Workloads to run (1 keyed/memory, 2 keyed/redis, 3 unkeyed, 4
    /// keyed/memory through `kneo proxy`).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4])]
    workloads: Vec<u8>,
    /// The `kneo` binary for workload 4 [default: `kneo` next to this one].
    #[arg(long)]
    kneo: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!(
        "faults: {} requests per workload, fault rate {}, seed {seed}",
        args.requests, args.fault_rate
    );
    let mut failed = false;
    for n in &args.workloads {
        let workload = match n {
            1 => Workload::Keyed,
            2 => Workload::KeyedRedis,
            3 => Workload::Unkeyed,
            4 => Workload::Proxied,
            other => {
                eprintln!("no workload {other}: 1, 2, 3 or 4");
                return ExitCode::from(2);
            }
        };
        let mut options =
            Options::new(args.requests, args.fault_rate, seed).concurrency(args.concurrency);
        if workload == Workload::Proxied {
            let Some(kneo) = args.kneo.clone().or_else(sibling_kneo) else {
                eprintln!(
                    "workload 4 needs the kneo binary: build it (cargo build -p kneo-cli) or pass --kneo PATH"
                );
                return ExitCode::from(2);
            };
            options = options.kneo(kneo);
        }
        let Some(report) = run(workload, &options).await else {
            continue;
        };
        println!("{report}");
        for violation in report.violations() {
            eprintln!("VIOLATION {violation}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `kneo` in the directory of this executable (`target/<profile>/`), if built.
fn sibling_kneo() -> Option<PathBuf> {
    let kneo = std::env::current_exe()
        .ok()?
        .with_file_name(format!("kneo{}", std::env::consts::EXE_SUFFIX));
    kneo.is_file().then_some(kneo)
}
