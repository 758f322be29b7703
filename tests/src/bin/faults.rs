//! The fault soak: `cargo run -p kneo-tests --bin faults -- --requests 50000
//! --fault-rate 0.3 --seed S`. Runs the workloads of `tests/tests/faults.rs`
//! (and workload 4, `crates/kneo-cli/tests/faults.rs`) at any size, prints
//! the figures, and exits 1 on any duplicate or other violation.
//!
//! Workload 4 runs the real `kneo` binary as the proxy: by default the one
//! next to this executable, so build it first (`cargo build -p kneo-cli`).
//! Workload 5 (`--workloads 5`, not in the default set) kills `pg_server`
//! processes (next to this executable: `cargo build -p kneo-tests --bins`)
//! and runs on a Postgres it starts, with the transactional design and then
//! the Redis one; only the first promises no duplicates (`tests/tests/pg_faults.rs`).
//!
//! `--hangup` runs the hang-up workload instead (`tests/tests/hangup_faults.rs`,
//! `crates/kneo-cli/tests/hangup.rs`): `--requests` per target, callers that
//! give up and retry with the same key, no relay; `--targets` picks from
//! `memory,redis,proxy-memory,proxy-redis` (all by default).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kneo_tests::faults::pg_kills::{run_kills, Design, KillOptions};
use kneo_tests::faults::{run, run_hangup, HangupOptions, Options, Target, Workload};

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
    /// Requests in flight at once [default: 16; 64 with --hangup].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Workloads to run (1 keyed/memory, 2 keyed/redis, 3 unkeyed, 4
    /// keyed/memory through `kneo proxy`, 5 ledger servers killed: not by
    /// default).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4])]
    workloads: Vec<u8>,
    /// The `kneo` binary for workload 4 [default: `kneo` next to this one].
    #[arg(long)]
    kneo: Option<PathBuf>,
    /// Workload 2: run the servers as `fault_server` processes and kill the
    /// one that gets logical request N first, mid-handler.
    #[arg(long, value_name = "N")]
    crash: Option<u64>,
    /// Workload 2: kill redis-server once N requests have started, restart
    /// it (durable) MS milliseconds later.
    #[arg(long, value_name = "N:MS", value_parser = parse_outage)]
    outage: Option<(u64, u64)>,
    /// Run the hang-up workload (callers that give up, then retry with the
    /// same key) instead of the relay's workloads.
    #[arg(long)]
    hangup: bool,
    /// With --hangup: the targets (memory, redis, proxy-memory, proxy-redis).
    #[arg(long, value_delimiter = ',', value_parser = parse_target,
          default_values = ["memory", "redis", "proxy-memory", "proxy-redis"])]
    targets: Vec<Target>,
    /// Workload 5: the share of requests with a planned kill point.
    #[arg(long, default_value_t = 0.02)]
    kill_rate: f64,
    /// Workload 5: the mean time between kills at random times (0: none).
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    kill_every_ms: u64,
    /// Workload 5: the relay's fault rate (its own, not `--fault-rate`).
    #[arg(long, default_value_t = 0.0)]
    kill_fault_rate: f64,
    /// Workload 5: the designs to run (transactional, redis).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("transactional"), String::from("redis")])]
    kill_designs: Vec<String>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::from_name(s)
        .ok_or_else(|| format!("no target {s:?}: memory, redis, proxy-memory or proxy-redis"))
}

fn parse_outage(s: &str) -> Result<(u64, u64), String> {
    let (after, ms) = s
        .split_once(':')
        .ok_or("expected N:MS, such as 10000:2000")?;
    let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{v:?}: {e}"));
    Ok((number(after)?, number(ms)?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    if args.hangup {
        return hangup(&args, seed).await;
    }
    println!(
        "faults: {} requests per workload, fault rate {}, seed {seed}",
        args.requests, args.fault_rate
    );
    if args.workloads.contains(&5) {
        println!(
            "workload 5: kill rate {}, a random kill every {} ms on average (0: none), relay fault rate {}",
            args.kill_rate, args.kill_every_ms, args.kill_fault_rate
        );
    }
    // Every workload's options first, so a missing binary is said before
    // minutes of the others have run.
    let mut runs = Vec::new();
    let kill_runs = match kill_options(&args, seed) {
        Ok(runs) => runs,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::from(2);
        }
    };
    for n in args.workloads.iter().filter(|n| **n != 5) {
        match options(*n, &args, seed) {
            Ok(run) => runs.push(run),
            Err(why) => {
                eprintln!("{why}");
                return ExitCode::from(2);
            }
        }
    }
    let mut failed = false;
    for (workload, options) in runs {
        let Some(report) = run(workload, &options).await else {
            continue;
        };
        println!("{report}");
        for violation in report.violations() {
            eprintln!("VIOLATION {violation}");
            failed = true;
        }
    }
    for (design, options) in kill_runs {
        let Some(report) = run_kills(design, &options).await else {
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

/// Workload `n` and its options, or why it cannot run.
fn options(n: u8, args: &Args, seed: u64) -> Result<(Workload, Options), String> {
    let workload = match n {
        1 => Workload::Keyed,
        2 => Workload::KeyedRedis,
        3 => Workload::Unkeyed,
        4 => Workload::Proxied,
        other => return Err(format!("no workload {other}: 1, 2, 3, 4 or 5")),
    };
    let mut options = Options::new(args.requests, args.fault_rate, seed)
        .concurrency(args.concurrency.unwrap_or(16));
    if workload == Workload::Proxied {
        let kneo = args
            .kneo
            .clone()
            .or_else(|| sibling("kneo"))
            .filter(|path| path.is_file())
            .ok_or(
                "workload 4 needs the kneo binary: build it (cargo build -p kneo-cli) or pass --kneo PATH",
            )?;
        options = options.kneo(kneo);
    }
    if workload == Workload::KeyedRedis {
        if let Some(id) = args.crash {
            let bin = sibling("fault_server").ok_or(
                "--crash needs fault_server next to this binary (cargo build -p kneo-tests --bins)",
            )?;
            options = options.crash(bin, id);
        }
        if let Some((after, ms)) = args.outage {
            options = options.outage(after, Duration::from_millis(ms));
        }
    }
    Ok((workload, options))
}

/// The hang-up workload against each of `args.targets`.
async fn hangup(args: &Args, seed: u64) -> ExitCode {
    println!(
        "hang-up: {} requests per target, seed {seed}",
        args.requests
    );
    let mut options =
        HangupOptions::new(args.requests, seed).concurrency(args.concurrency.unwrap_or(64));
    if args.targets.iter().any(|t| t.proxied()) {
        let Some(kneo) = args
            .kneo
            .clone()
            .or_else(|| sibling("kneo"))
            .filter(|p| p.is_file())
        else {
            eprintln!("the proxy targets need the kneo binary: build it (cargo build -p kneo-cli) or pass --kneo PATH");
            return ExitCode::from(2);
        };
        options = options.kneo(kneo);
    }
    let mut failed = false;
    for target in &args.targets {
        let Some(report) = run_hangup(*target, &options).await else {
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

/// Workload 5's runs, one per design, when `--workloads` has 5.
fn kill_options(args: &Args, seed: u64) -> Result<Vec<(Design, KillOptions)>, String> {
    if !args.workloads.contains(&5) {
        return Ok(Vec::new());
    }
    let bin = sibling("pg_server").ok_or(
        "workload 5 needs pg_server next to this binary (cargo build -p kneo-tests --bins)",
    )?;
    let random = (args.kill_every_ms > 0).then(|| Duration::from_millis(args.kill_every_ms));
    let options = KillOptions::new(bin, args.requests, seed)
        .concurrency(args.concurrency.unwrap_or(16))
        .kill_rate(args.kill_rate)
        .random_kills(random)
        .fault_rate(args.kill_fault_rate);
    args.kill_designs
        .iter()
        .map(|name| match name.as_str() {
            "transactional" => Ok((Design::Transactional, options.clone())),
            "redis" => Ok((Design::Redis, options.clone())),
            other => Err(format!("no design {other:?}: transactional or redis")),
        })
        .collect()
}

/// The executable `name` in the directory of this one (`target/<profile>/`),
/// if built.
fn sibling(name: &str) -> Option<PathBuf> {
    let path = std::env::current_exe()
        .ok()?
        .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}
