//! Black-box tests of `kneo proxy`'s caller scopes: with `--idempotency`, a
//! stored answer is replayed only to the caller whose credential made it
//! (`X-Api-Key`, `--scope-header`, `--scope-cookie`), keyed with
//! `KNEO_SCOPE_SECRET`; and a rate limit spent by one key does not hold up
//! another. The built binary runs between a plain hyper client and a
//! scripted loopback upstream that counts what reaches it.

use kneo_tests::guarded;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Stdio;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kneo_tests::{Reply, ScriptedServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "a test secret of more than sixteen bytes";

/// A running `kneo proxy`, killed on drop.
struct Sidecar {
    _child: Child,
    listen: SocketAddr,
}

impl Sidecar {
    /// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 ARGS`, with
    /// `KNEO_SCOPE_SECRET` set to `secret` (or unset), once its startup line
    /// is out.
    async fn start(upstream: &str, args: &[&str], secret: Option<&str>) -> Sidecar {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kneo"));
        command
            .args(["proxy", "--upstream", upstream, "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("KNEO_SCOPE_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            command.env("KNEO_SCOPE_SECRET", secret);
        }
        let mut child = command.spawn().expect("spawn kneo proxy");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = guarded("the startup line", lines.next_line())
            .await
            .expect("read stdout")
            .expect("kneo proxy printed its startup line");
        // The access log goes on; nobody needs to read it here.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let startup: Value = serde_json::from_str(&first).expect("the startup line is JSON");
        let listen = startup["listening"]
            .as_str()
            .expect("an address")
            .parse()
            .expect("IP:PORT");
        Sidecar {
            _child: child,
            listen,
        }
    }

    /// Sends `method path` with these headers; the status, whether it was a
    /// replay, the body.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.listen, path));
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
        let client = Client::builder(TokioExecutor::new()).build_http();
        let res = guarded("the response", client.request(req))
            .await
            .expect("the proxy answers");
        let status = res.status();
        let replayed = res
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let body = guarded("the body", res.into_body().collect())
            .await
            .expect("the whole body")
            .to_bytes();
        Got {
            status,
            replayed,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    /// POST /charges with `Idempotency-Key: charge-1` and these headers.
    async fn charge(&self, headers: &[(&str, &str)]) -> Got {
        let mut all = vec![("idempotency-key", "charge-1")];
        all.extend_from_slice(headers);
        self.send("POST", "/charges", &all).await
    }
}

#[derive(Debug)]
struct Got {
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
        let proxy = Sidecar::start(&upstream.url(""), &["--idempotency", "memory"], secret).await;
        let before = upstream.count();
        let one = proxy.charge(&[("x-api-key", "tenant1")]).await;
        let two = proxy.charge(&[("x-api-key", "tenant2")]).await;
        assert_eq!(one.status, StatusCode::CREATED);
        assert_eq!(two.status, StatusCode::CREATED);
        assert!(!one.replayed && !two.replayed, "{secret:?}: {two:?}");
        assert_ne!(one.body, two.body, "tenant2 got tenant1's answer");
        assert_eq!(upstream.count() - before, 2, "{secret:?}: two executions");

        let again = proxy.charge(&[("x-api-key", "tenant1")]).await;
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
    let proxy = Sidecar::start(
        &upstream.url(""),
        &["--idempotency", "memory", "--scope-cookie", "session"],
        Some(SECRET),
    )
    .await;
    let alice = proxy
        .charge(&[("cookie", "session=alice; _ga=GA1.1")])
        .await;
    let bob = proxy.charge(&[("cookie", "session=bob; _ga=GA1.1")]).await;
    assert!(!alice.replayed && !bob.replayed, "{bob:?}");
    assert_ne!(alice.body, bob.body, "bob got alice's answer");
    assert_eq!(upstream.count(), 2);

    // Alice's retry after her analytics cookie changed: her own answer.
    let retry = proxy
        .charge(&[("cookie", "_ga=GA1.2; session=alice")])
        .await;
    assert!(retry.replayed, "an honest retry ran again");
    assert_eq!(retry.body, alice.body);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn scope_header_adds_a_credential_header() {
    let upstream = counting_upstream().await;
    let proxy = Sidecar::start(
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
    let one = proxy.charge(&[("x-tenant-key", "t1")]).await;
    let two = proxy.charge(&[("x-tenant-key", "t2")]).await;
    assert!(!two.replayed);
    assert_ne!(one.body, two.body);
    // The defaults still count.
    let three = proxy
        .charge(&[("x-tenant-key", "t1"), ("api-key", "k")])
        .await;
    assert!(!three.replayed);
    assert_eq!(upstream.count(), 3);
    assert!(proxy.charge(&[("x-tenant-key", "t2")]).await.replayed);
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
    let proxy = Sidecar::start(&upstream.url(""), &["--max-retry-after", "5"], None).await;
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
    let first = proxy.send("GET", "/v1/chat", spent).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let got = proxy.send("GET", "/v1/models", other).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(upstream.count(), 2, "the other caller reached the upstream");
    let refused = proxy.send("GET", "/v1/models", spent).await;
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
    let proxy = Sidecar::start(
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_kneo"));
        command
            .args([
                "proxy",
                "--upstream",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env_remove("KNEO_SCOPE_SECRET")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            command.env("KNEO_SCOPE_SECRET", secret);
        }
        let out = guarded("exit", command.output()).await.expect("ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        // One line, then (for an argument error) clap's usage line.
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1
                || lines
                    .get(2)
                    .is_some_and(|l| l.starts_with("Usage: kneo proxy")),
            "{args:?}: {stderr:?}"
        );
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr:?}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr:?}");
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_kneo"));
        command
            .args([
                "proxy",
                "--upstream",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--idempotency", &redis.url()])
            .env_remove("KNEO_SCOPE_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            command.env("KNEO_SCOPE_SECRET", secret);
        }
        let mut child = command.spawn().expect("spawn kneo proxy");
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
