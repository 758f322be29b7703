//! Exactly-once under injected faults: a [`FaultRelay`] between kneo's
//! client and [`FaultServer`]s (axum behind kneo-server's `IdempotencyLayer`)
//! that resets, cuts and delays connections at a seeded random rate, and the
//! [workloads](run) that check no request takes effect twice.
//!
//! ```no_run
//! use kneo_tests::faults::{run, Options, Workload};
//!
//! # async fn demo() {
//! let options = Options::new(1_000, 0.2, 7);
//! let report = run(Workload::Keyed, &options).await.expect("runs here");
//! println!("{report}");
//! assert!(report.violations().is_empty(), "{:?}", report.violations());
//! # }
//! ```
//!
//! # The fault model
//!
//! Each connection the relay accepts gets one [`Fault`]: pass, reset before
//! the request is forwarded, reset after the server answered (the request
//! was applied; the client hears nothing), the response cut in half (inside
//! its head, for these small responses), the response cut inside its body
//! (the client has a 201 and a body that breaks off), or a delay. The client
//! keeps no idle connections, so every attempt meets a fresh pick; the
//! servers close each connection after one response.
//!
//! # Beyond the relay
//!
//! - Workload 4 runs the real `kneo proxy`
//!   ([`Sidecar`](crate::sidecar::Sidecar)) behind the relay.
//! - [`Options::outage`] kills `redis-server` mid-run and restarts it
//!   (durable) in workload 2.
//! - [`Options::crash`] runs workload 2's servers as processes
//!   ([`ServerProcess`], the `fault_server` binary) and kills the one that
//!   stalls on a chosen request, mid-handler.
//! - [The hang-up workload](run_hangup) has no relay: its callers give up on
//!   keyed requests themselves ([`caller`]: before the body is sent, while
//!   the handler runs, while the response streams) and retry with the same
//!   key, against a [`SlowServer`] in process or behind `kneo proxy`.
//! - Workload 5 ([`pg_kills`]) `SIGKILL`s ledger server processes whose
//!   record commits in the handler's Postgres transaction, and the same
//!   kills against a Redis-recorded ledger, counting rows per key.

pub mod caller;
mod hangup;
pub mod pg_kills;
mod process;
mod relay;
mod server;
mod slow;
mod workload;

pub use hangup::{run_hangup, HangupOptions, HangupReport, Target};
pub use process::ServerProcess;
pub use relay::{Fault, FaultConfig, FaultCounts, FaultRelay};
pub use server::{Effects, FaultServer, Stall};
pub use slow::{Charge, Runs, SlowServer};
pub use workload::{run, CrashReport, Options, Outage, OutageReport, Report, Workload};
