//! Black-box tests of `kneo proxy`'s caller scopes: with `--idempotency`, a
//! stored answer is replayed only to the caller whose credential made it
//! (`X-Api-Key`, `--scope-header`, `--scope-cookie`), keyed with
//! `KNEO_SCOPE_SECRET`; and a rate limit spent by one key does not hold up
//! another. The built binary runs between a plain hyper client and a
//! scripted loopback upstream that counts what reaches it.

use kneo_tests::guarded;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use kneo_tests::proxy_client;
use kneo_tests::sidecar::{self, Sidecar};
use kneo_tests::{Reply, ScriptedServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const SECRET: &str = "a test secret of more than sixteen bytes";

/// `KNEO_SCOPE_SECRET` set to `secret` in `command`'s environment, or
/// removed from it.
fn scope_secret(command: &mut Command, secret: Option<&OsStr>) {
    command.env_remove("KNEO_SCOPE_SECRET");
    if let Some(secret) = secret {
        command.env("KNEO_SCOPE_SECRET", secret);
    }
}

/// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 ARGS` with its
/// [`scope_secret`], once its startup line is out.
async fn sidecar(upstream: &str, args: &[&str], secret: Option<&str>) -> Sidecar {
    let all = [&["--upstream", upstream][..], args].concat();
    let mut command = sidecar::command(kneo(), &all);
    scope_secret(&mut command, secret.map(OsStr::new));
    Sidecar::spawn(command).await.expect("kneo proxy starts")
}

fn kneo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kneo"))
}

/// Sends `method path` with these headers; the status, whether it was a
/// replay, the body.
async fn send(proxy: &Sidecar, method: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let mut req = Request::builder().method(method).uri(proxy.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = if method == "POST" {
        &b"{\"amount\":5}"[..]
    } else {
        b""
    };
    let req = req
        .body(Full::new(Bytes::from_static(body)))
        .expect("valid");
    let got = proxy_client::send(req).await;
    Seen {
        status: got.status,
        replayed: got.replayed(),
        body: serde_json::from_slice(&got.body).unwrap_or(Value::Null),
    }
}

/// POST /charges with `Idempotency-Key: charge-1` and these headers.
async fn charge(proxy: &Sidecar, headers: &[(&str, &str)]) -> Seen {
    let mut all = vec![("idempotency-key", "charge-1")];
    all.extend_from_slice(headers);
    send(proxy, "POST", "/charges", &all).await
}

/// What the caller saw: the body as JSON (null when it is not).
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    replayed: bool,
    body: Value,
}

/// An upstream that creates a charge per request it sees: `{"run": N}`.
async fn counting_upstream() -> ScriptedServer {
    ScriptedServer::with(|n, _| Reply::json(201, &format!(r#"{{"run":{}}}"#, n + 1))).await
}

#[tokio::test]
async fn x_api_key_tenants_with_one_key_both_run_and_neither_is_replayed_the_other() {
    let upstream = counting_upstream().await;
    for secret in [None, Some(SECRET)] {
        let proxy = sidecar(&upstream.url(""), &["--idempotency", "memory"], secret).await;
        let before = upstream.count();
        let one = charge(&proxy, &[("x-api-key", "tenant1")]).await;
        let two = charge(&proxy, &[("x-api-key", "tenant2")]).await;
        assert_eq!(one.status, StatusCode::CREATED);
        assert_eq!(two.status, StatusCode::CREATED);
        assert!(!one.replayed && !two.replayed, "{secret:?}: {two:?}");
        assert_ne!(one.body, two.body, "tenant2 got tenant1's answer");
        assert_eq!(upstream.count() - before, 2, "{secret:?}: two executions");

        let again = charge(&proxy, &[("x-api-key", "tenant1")]).await;
        assert!(
            again.replayed,
            "{secret:?}: the same tenant's retry is a replay"
        );
        assert_eq!(again.body, one.body);
        assert_eq!(upstream.count() - before, 2);
    }
}

#[tokio::test]
async fn scope_cookie_separates_sessions_and_ignores_other_cookies() {
    let upstream = counting_upstream().await;
    let proxy = sidecar(
        &upstream.url(""),
        &["--idempotency", "memory", "--scope-cookie", "session"],
        Some(SECRET),
    )
    .await;
    let alice = charge(&proxy, &[("cookie", "session=alice; _ga=GA1.1")]).await;
    let bob = charge(&proxy, &[("cookie", "session=bob; _ga=GA1.1")]).await;
    assert!(!alice.replayed && !bob.replayed, "{bob:?}");
    assert_ne!(alice.body, bob.body, "bob got alice's answer");
    assert_eq!(upstream.count(), 2);

    // Alice's retry after her analytics cookie changed: her own answer.
    let retry = charge(&proxy, &[("cookie", "_ga=GA1.2; session=alice")]).await;
    assert!(retry.replayed, "an honest retry ran again");
    assert_eq!(retry.body, alice.body);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn scope_header_adds_a_credential_header() {
    let upstream = counting_upstream().await;
    let proxy = sidecar(
        &upstream.url(""),
        &[
            "--idempotency",
            "memory",
            "--scope-header",
            "X-Tenant-Key",
            "--scope-header",
            "x-other",
        ],
        None,
    )
    .await;
    let one = charge(&proxy, &[("x-tenant-key", "t1")]).await;
    let two = charge(&proxy, &[("x-tenant-key", "t2")]).await;
    assert!(!two.replayed);
    assert_ne!(one.body, two.body);
    // The defaults still count.
    let three = charge(&proxy, &[("x-tenant-key", "t1"), ("api-key", "k")]).await;
    assert!(!three.replayed);
    assert_eq!(upstream.count(), 3);
    assert!(charge(&proxy, &[("x-tenant-key", "t2")]).await.replayed);
    assert_eq!(upstream.count(), 3);
}

/// The issue's case, through the sidecar: sk-A's spent quota is a local 429
/// for sk-A only; sk-B reaches the upstream.
#[tokio::test]
async fn one_keys_spent_rate_limit_does_not_block_another_key() {
    let upstream = ScriptedServer::with(|_, req| {
        if req.header("authorization").as_deref() == Some("Bearer sk-A") {
            Reply::json(200, "{}")
                .header("x-ratelimit-limit-requests", "60")
                .header("x-ratelimit-remaining-requests", "0")
                .header("x-ratelimit-reset-requests", "6m0s")
        } else {
            Reply::json(200, "{}")
        }
    })
    .await;
    let proxy = sidecar(&upstream.url(""), &["--max-retry-after", "5"], None).await;
    let a = [("authorization", "Bearer sk-A")];
    let b = [("authorization", "Bearer sk-B")];
    spent_quota_holds_up_only_its_caller(&proxy, &upstream, &a, &b).await;
}

/// `spent`'s first request learns that its quota is spent, `other` still
/// reaches the upstream, and `spent`'s next request is a local 429, not sent.
async fn spent_quota_holds_up_only_its_caller(
    proxy: &Sidecar,
    upstream: &ScriptedServer,
    spent: &[(&str, &str)],
    other: &[(&str, &str)],
) {
    let first = send(proxy, "GET", "/v1/chat", spent).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let got = send(proxy, "GET", "/v1/models", other).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(upstream.count(), 2, "the other caller reached the upstream");
    let refused = send(proxy, "GET", "/v1/models", spent).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["code"], "rate_limited_locally");
    assert_eq!(upstream.count(), 2, "the spent caller was not sent");
}

/// `--scope-header` tells callers apart for the throttle too: tenant t1's
/// spent quota is a local 429 for t1 only; t2, with no other credential,
/// still reaches the upstream.
#[tokio::test]
async fn scope_header_partitions_the_rate_limit_throttle_too() {
    let upstream = ScriptedServer::with(|_, req| {
        if req.header("x-tenant-key").as_deref() == Some("t1") {
            Reply::json(200, "{}")
                .header("ratelimit-policy", r#""hour";q=100;w=3600"#)
                .header("ratelimit", r#""hour";r=0;t=600"#)
        } else {
            Reply::json(200, "{}")
        }
    })
    .await;
    let proxy = sidecar(
        &upstream.url(""),
        &[
            "--idempotency",
            "memory",
            "--scope-header",
            "X-Tenant-Key",
            "--max-retry-after",
            "5",
        ],
        None,
    )
    .await;
    let t1 = [("x-tenant-key", "t1")];
    let t2 = [("x-tenant-key", "t2")];
    spent_quota_holds_up_only_its_caller(&proxy, &upstream, &t1, &t2).await;
}

/// Bad scope flags and secrets: exit 2, one error line on stderr (and for a
/// flag, clap's usage line), nothing on stdout, and neither the secret nor
/// the rejected value quoted.
#[tokio::test]
async fn bad_scope_flags_and_secrets_exit_2_without_echoing_them() {
    let long = "hunter2-hunter2-hunter2";
    let cases: Vec<(Vec<&str>, Option<OsString>)> = vec![
        (
            vec!["--idempotency", "memory", "--scope-header", "bad hunter2"],
            Some(long.into()),
        ),
        (
            vec!["--idempotency", "memory", "--scope-header", ""],
            Some(long.into()),
        ),
        (
            vec!["--idempotency", "memory", "--scope-cookie", "a=hunter2"],
            Some(long.into()),
        ),
        (
            vec!["--idempotency", "memory", "--scope-cookie", "hunter2;x"],
            None,
        ),
        // Scope flags mean nothing without --idempotency.
        (vec!["--scope-header", "x-hunter2"], Some(long.into())),
        (vec!["--scope-cookie", "hunter2"], None),
        // A secret too short to key anything, or empty.
        (vec!["--idempotency", "memory"], Some("hunter2".into())),
        (vec!["--idempotency", "memory"], Some("".into())),
        // Never a flag.
        (
            vec!["--idempotency", "memory", "--scope-secret", long],
            None,
        ),
        (
            vec!["--idempotency", "memory", "--scope-secret=hunter2"],
            None,
        ),
    ];
    #[cfg(unix)]
    let cases = {
        use std::os::unix::ffi::OsStringExt;
        let mut cases = cases;
        let not_utf8 = OsString::from_vec(b"\xffhunter2-hunter2-hunter2".to_vec());
        cases.push((vec!["--idempotency", "memory"], Some(not_utf8)));
        cases
    };
    for (args, secret) in &cases {
        let all = [&["--upstream", "http://127.0.0.1:1"][..], args].concat();
        let mut command = sidecar::command(kneo(), &all);
        scope_secret(&mut command, secret.as_deref());
        sidecar::assert_refused(command, &format!("{args:?}"), "hunter2").await;
    }
}

/// With Redis and no `KNEO_SCOPE_SECRET`, the sidecar says the scopes in the
/// shared store are keyed with the public default; with one, it says nothing
/// (and never prints it).
#[tokio::test]
async fn redis_without_a_secret_warns_and_with_one_does_not() {
    let Some(redis) = kneo_tests::redis::RedisServer::start() else {
        return;
    };
    for secret in [None, Some(SECRET)] {
        let url = redis.url();
        let args = ["--upstream", "http://127.0.0.1:1", "--idempotency", &url];
        let mut command = sidecar::command(kneo(), &args);
        scope_secret(&mut command, secret.map(OsStr::new));
        let mut child = tokio::process::Command::from(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kneo proxy");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        guarded("the startup line", lines.next_line())
            .await
            .expect("read")
            .expect("started");
        child.start_kill().expect("kill");
        let out = guarded("exit", child.wait_with_output())
            .await
            .expect("exited");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("KNEO_SCOPE_SECRET is not set"),
            secret.is_none(),
            "{secret:?}: {stderr:?}"
        );
        assert!(!stderr.contains(SECRET), "{stderr:?}");
    }
}
