//! The proxy memory soak: `cargo build --release -p kneo-cli -p kneo-tests &&
//! target/release/proxy_rss [--bytes N] [--max-rss-mib 64] [--kneo PATH]`.
//! Streams N bytes (1 GiB by default) from a loopback upstream through the
//! real `kneo proxy` binary, prints bytes, seconds, MiB/s and the proxy's peak
//! RSS (`VmHWM`, and the largest sampled `VmRSS`), and exits 1 when the bytes
//! differ or either reaches the limit (2 when it cannot run).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kneo_tests::proxy_rss::{run, Options};

/// A large response through `kneo proxy`, its peak RSS measured from /proc.
#[derive(Debug, Parser)]
struct Args {
    /// Response size in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Fail when the proxy's VmHWM (or a sampled VmRSS) reaches this many MiB.
    #[arg(long, default_value_t = 64)]
    max_rss_mib: u64,
    /// The `kneo` executable [default: `kneo` beside this one].
    #[arg(long, value_name = "PATH")]
    kneo: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let kneo = match args.kneo {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(format!("kneo{}", std::env::consts::EXE_SUFFIX)),
            Err(e) => {
                eprintln!("proxy_rss: cannot find this executable ({e}); pass --kneo PATH");
                return ExitCode::from(2);
            }
        },
    };
    if !kneo.is_file() {
        eprintln!(
            "proxy_rss: no kneo binary at {}; build it first: `cargo build -p kneo-cli` \
             (`cargo build --release -p kneo-cli` for a release soak), or pass --kneo PATH",
            kneo.display()
        );
        return ExitCode::from(2);
    }
    println!(
        "proxy_rss: {} bytes through {}, limit {} MiB",
        args.bytes,
        kneo.display(),
        args.max_rss_mib
    );
    let report = match run(&Options::new(kneo, args.bytes)).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("proxy_rss: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    let mut failed = false;
    if report.bytes != report.expected {
        eprintln!(
            "FAIL: received {} bytes, the upstream sent {}",
            report.bytes, report.expected
        );
        failed = true;
    }
    if report.peak_kib() >= args.max_rss_mib * 1024 {
        eprintln!(
            "FAIL: the proxy's peak RSS {} KiB (VmHWM {} KiB, max sampled VmRSS {} KiB) \
             reached the limit of {} MiB",
            report.peak_kib(),
            report.vm_hwm_kib,
            report.max_rss_kib,
            args.max_rss_mib
        );
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
