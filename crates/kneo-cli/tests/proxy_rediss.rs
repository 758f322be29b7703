//! `kneo proxy --idempotency rediss://USER:PASSWORD@HOST:PORT`: the sidecar
//! keeps its records in Redis run as managed Redis is (TLS only, an ACL
//! user), through the built binary. The test's CA reaches it as a private
//! CA would: in `SSL_CERT_FILE`.
//!
//! Timeouts around awaits are guards against a hang, not claims.

use kneo_tests::guarded;
use std::path::Path;

use http::StatusCode;
use kneo_tests::proxy_client::post_charge;
use kneo_tests::redis::{RedisServer, TLS_PASSWORD};
use kneo_tests::sidecar::Sidecar;
use kneo_tests::{Reply, ScriptedServer};

#[tokio::test]
async fn the_sidecar_keeps_its_records_in_managed_redis() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let upstream =
        ScriptedServer::with(|n, _| Reply::json(201, &format!(r#"{{"charge":{n}}}"#))).await;
    let kneo = Path::new(env!("CARGO_BIN_EXE_kneo"));

    // The platform's roots do not hold the test's CA: the sidecar refuses to
    // start, and says why without the password.
    let refused = guarded(
        "kneo proxy without the CA",
        tokio::process::Command::new(kneo)
            .args(["proxy", "--upstream", &upstream.url(""), "--listen"])
            .args(["127.0.0.1:0", "--idempotency", &redis.url()])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .output(),
    )
    .await
    .expect("kneo runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Redis of --idempotency")
            && stderr.contains("certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains(TLS_PASSWORD), "{stderr}");

    // With it, through the environment the sidecar inherits (the only test
    // of this binary, so no other test sees it).
    std::env::set_var("SSL_CERT_FILE", redis.ca_file().expect("a TLS server"));
    let proxy = Sidecar::start(kneo, &upstream.url(""), &["--idempotency", &redis.url()])
        .await
        .expect("kneo proxy starts on managed Redis");
    let first = post_charge(proxy.addr(), "pay-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert!(!first.replayed());
    let again = post_charge(proxy.addr(), "pay-1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert!(again.replayed(), "answered from the record in Redis");
    assert_eq!(again.body, first.body);
    assert_eq!(upstream.count(), 1, "the upstream ran it once");
}
