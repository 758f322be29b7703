//! Workload 4 of the fault tests (issue 11): keyed POSTs through the real
//! `kneo proxy` binary, with the fault-injecting relay between kneo's client
//! and the proxy (client → relay → proxy → server, `MemoryStore`). No key
//! may take effect twice; every success has exactly one effect. The runner
//! and its checks are `kneo_tests::faults`; the seed is printed and
//! `FAULTS_SEED` replays it.

use kneo_tests::faults::{run, Options, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_posts_through_kneo_proxy_take_effect_at_most_once() {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let options = Options::new(1_000, 0.2, seed).kneo(env!("CARGO_BIN_EXE_kneo"));
    let report = run(Workload::Proxied, &options)
        .await
        .expect("runs wherever the binary is built");
    println!("{report}");
    let violations = report.violations();
    assert!(violations.is_empty(), "{violations:#?}\n{report}");
    assert!(report.faults["reset_after_request"] > 0, "{report}");
    assert!(report.faults["cut_body"] > 0, "{report}");
    assert!(
        report.replayed > 0,
        "lost responses were replayed: {report}"
    );
    assert_eq!(report.succeeded + report.failed(), 1_000, "{report}");
}
