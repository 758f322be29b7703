//! The proxy's memory under a large response: 128 MiB stream through the
//! built `kneo proxy` and its peak RSS (`VmHWM`, from /proc) stays under
//! 64 MiB. The 1 GiB soak is `kneo-tests`'s `proxy_rss` binary; both run
//! `kneo_tests::proxy_rss`.

use kneo_tests::proxy_rss::{run, Options};

const BYTES: u64 = 128 * 1024 * 1024;
const MAX_RSS_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_128_mib_response_streams_through_the_proxy_in_under_64_mib() {
    let report = run(&Options::new(env!("CARGO_BIN_EXE_kneo"), BYTES))
        .await
        .expect("the transfer runs");
    println!("{report}");
    assert_eq!(report.bytes, BYTES, "every byte arrived, once");
    assert!(
        report.vm_hwm_kib < MAX_RSS_KIB,
        "the proxy's VmHWM was {} KiB, not under {MAX_RSS_KIB} KiB: it buffers",
        report.vm_hwm_kib
    );
    assert!(report.samples > 0, "VmRSS was sampled");
    assert!(
        report.max_rss_kib < MAX_RSS_KIB,
        "a sampled VmRSS was {} KiB, not under {MAX_RSS_KIB} KiB",
        report.max_rss_kib
    );
    assert!(
        report.idle_rss_kib > 1024,
        "the figures are a live process's RSS (over 1 MiB), not an empty read: {} KiB",
        report.idle_rss_kib
    );
}
