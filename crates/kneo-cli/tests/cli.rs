//! Black-box tests: the built `kneo` binary against scripted loopback servers.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kneo_tests::{Reply, ScriptedServer};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The one JSON line on stdout.
    fn json(&self) -> Value {
        assert_eq!(
            self.stdout.matches('\n').count(),
            1,
            "stdout is exactly one line: {:?} (stderr {:?})",
            self.stdout,
            self.stderr
        );
        assert!(self.stdout.ends_with('\n'));
        serde_json::from_str(&self.stdout).expect("stdout is JSON")
    }

    /// A success: exit 0 and `ok: true`.
    fn ok(&self) -> Value {
        let out = self.json();
        assert_eq!(self.code, 0, "{out}");
        assert_eq!(out["ok"], true);
        out
    }

    /// A kneo error: exit 1 and `ok: false`.
    fn failed(&self) -> Value {
        let out = self.json();
        assert_eq!(self.code, 1, "{out}");
        assert_eq!(out["ok"], false);
        out
    }

    /// A usage error: exit 2, nothing on stdout, on stderr one line saying
    /// what is wrong, then (for argument errors) the usage line. Returns
    /// the first line.
    fn usage(&self) -> &str {
        assert_eq!(self.code, 2, "stderr: {:?}", self.stderr);
        assert_eq!(self.stdout, "", "nothing on stdout");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1
                || (lines.len() == 5
                    && lines[2].starts_with("Usage: kneo")
                    && lines[4] == "For more information, try '--help'."),
            "one line, or one line and the usage: {:?}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{:?}", self.stderr);
        lines[0]
    }
}

async fn kneo(args: &[&str]) -> Run {
    kneo_with_stdin(args, b"").await
}

async fn kneo_with_stdin(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kneo"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kneo");
    let mut pipe = child.stdin.take().expect("piped stdin");
    pipe.write_all(stdin).await.expect("write stdin");
    drop(pipe);
    let out = child.wait_with_output().await.expect("kneo ran");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

#[tokio::test]
async fn get_success() {
    let server = ScriptedServer::start(vec![Reply::json(200, r#"{"id":7,"tags":["a"]}"#)]).await;
    let out = kneo(&["request", &server.url("/runs/7")]).await.ok();

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].uri.path(), "/runs/7");
    assert_eq!(reqs[0].header("idempotency-key"), None, "a GET gets no key");
    let sent_id = reqs[0].header("x-request-id").expect("id stamped");
    assert_eq!(out["status"], 200);
    assert_eq!(out["request_id"], sent_id.as_str(), "no echo: the id sent");
    assert_eq!(out["idempotency_key"], Value::Null);
    assert_eq!(out["attempts"], 1);
    assert_eq!(out["body"], json!({"id": 7, "tags": ["a"]}));
}

#[tokio::test]
async fn post_success_with_caller_headers_and_echo() {
    let server = ScriptedServer::start(vec![
        Reply::json(201, r#"{"id":8}"#).header("x-request-id", "srv-echo-1")
    ])
    .await;
    let out = kneo(&[
        "request",
        &server.url("/runs"),
        "-d",
        r#"{"n":1}"#,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Idempotency-Key: charge-41",
        "-H",
        "X-Request-ID: order-7",
    ])
    .await
    .ok();

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST", "--data defaults to POST");
    assert_eq!(&reqs[0].body[..], br#"{"n":1}"#);
    assert_eq!(
        reqs[0].header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reqs[0].header("idempotency-key").as_deref(),
        Some("charge-41")
    );
    assert_eq!(reqs[0].header("x-request-id").as_deref(), Some("order-7"));
    assert_eq!(out["status"], 201);
    assert_eq!(out["request_id"], "srv-echo-1", "the server's echo wins");
    assert_eq!(out["idempotency_key"], "charge-41");
    assert_eq!(out["body"], json!({"id": 8}));
}

#[tokio::test]
async fn post_gets_a_stamped_key_and_text_bodies_are_strings() {
    let server = ScriptedServer::start(vec![Reply::status(200).body("plain ok")]).await;
    let out = kneo(&["request", &server.url("/x"), "-X", "post"])
        .await
        .ok();
    let reqs = server.requests();
    assert_eq!(reqs[0].method, "POST");
    let key = reqs[0].header("idempotency-key").expect("key stamped");
    assert_eq!(out["idempotency_key"], key.as_str());
    assert_eq!(out["body"], "plain ok");
}

#[tokio::test]
async fn empty_body_is_null_and_method_overrides_data() {
    let server = ScriptedServer::start(vec![Reply::status(204)]).await;
    let out = kneo(&["request", &server.url("/x"), "-X", "PUT", "-d", "v"])
        .await
        .ok();
    assert_eq!(server.requests()[0].method, "PUT");
    assert_eq!(out["status"], 204);
    assert_eq!(out["body"], Value::Null);
}

#[tokio::test]
async fn data_from_file_and_stdin() {
    let server = ScriptedServer::start(vec![Reply::status(200)]).await;
    let path = std::env::temp_dir().join(format!("kneo-cli-body-{}", std::process::id()));
    std::fs::write(&path, b"from a file").expect("write body file");
    let at_path = format!("@{}", path.display());
    kneo(&["request", &server.url("/f"), "-d", &at_path])
        .await
        .ok();
    let _ = std::fs::remove_file(&path);
    kneo_with_stdin(&["request", &server.url("/s"), "-d", "@-"], b"from stdin")
        .await
        .ok();

    let reqs = server.requests();
    assert_eq!(&reqs[0].body[..], b"from a file");
    assert_eq!(&reqs[1].body[..], b"from stdin");
}

#[tokio::test]
async fn each_error_kind() {
    let cases: [(u16, &str, &[&str], &str, &str); 8] = [
        (
            401,
            r#"{"error":{"message":"key revoked"}}"#,
            &[],
            "auth",
            "authentication_error",
        ),
        (403, "", &[], "permission", "permission_denied"),
        (
            404,
            r#"{"error":{"code":"no_such_run","message":"run 9 not found"}}"#,
            &[],
            "not_found",
            "no_such_run",
        ),
        (409, "", &[], "conflict", "conflict"),
        (
            409,
            "",
            &["-d", "x"],
            "idempotency_mismatch",
            "idempotency_key_mismatch",
        ),
        (429, "", &[], "rate_limited", "rate_limit_exceeded"),
        (500, "boom", &[], "server", "server_error"),
        (418, "", &[], "status", "http_error"),
    ];
    for (status, body, extra, kind, code) in cases {
        let server = ScriptedServer::start(vec![Reply::json(status, body)]).await;
        let url = server.url("/x");
        let mut args = vec!["request", url.as_str(), "--max-attempts", "1"];
        args.extend_from_slice(extra);
        let out = kneo(&args).await.failed();
        assert_eq!(out["kind"], kind, "{status}: {out}");
        assert_eq!(out["code"], code, "{status}: {out}");
        assert_eq!(out["status"], status);
        assert_eq!(out["attempts"], 1);
        assert_eq!(out["retry_after"], Value::Null);
        let sent = server.requests()[0].header("x-request-id");
        assert_eq!(out["request_id"].as_str(), sent.as_deref());
        let key = server.requests()[0].header("idempotency-key");
        assert_eq!(out["idempotency_key"].as_str(), key.as_deref());
        match body {
            "" => assert_eq!(out["body"], Value::Null),
            "boom" => assert_eq!(out["body"], "boom"),
            json => assert_eq!(
                out["body"],
                serde_json::from_str::<Value>(json).expect("json")
            ),
        }
    }
}

#[tokio::test]
async fn error_message_and_echoed_id() {
    let server = ScriptedServer::start(vec![Reply::json(
        404,
        r#"{"error":{"message":"run 9 not found"}}"#,
    )
    .header("x-request-id", "srv-9")])
    .await;
    let out = kneo(&["request", &server.url("/runs/9")]).await.failed();
    assert_eq!(out["message"], "run 9 not found");
    assert_eq!(out["request_id"], "srv-9");
    assert_eq!(out["attempts"], 1, "a 404 is not retried");
}

#[tokio::test]
async fn retry_honours_retry_after() {
    let server = ScriptedServer::start(vec![
        Reply::status(503).header("retry-after", "1"),
        Reply::json(200, r#"{"ok":1}"#),
    ])
    .await;
    let started = Instant::now();
    let run = kneo(&["request", &server.url("/x"), "-v"]).await;
    let elapsed = started.elapsed();
    let out = run.ok();
    assert_eq!(out["attempts"], 2);
    assert_eq!(server.count(), 2);
    assert!(elapsed >= Duration::from_secs(1), "waited {elapsed:?}");
    // The retry log line, at INFO from `kneo::retry`, with the request id as a field.
    let log = &run.stderr;
    assert!(log.contains("kneo::retry"), "-v logs: {log:?}");
    assert!(
        log.contains("attempt 1 failed (503 Service Unavailable); retrying in 1.00s"),
        "-v logs: {log:?}"
    );
    assert!(log.contains("request_id="), "-v logs: {log:?}");
    let reqs = server.requests();
    assert_eq!(
        reqs[0].header("x-request-id"),
        reqs[1].header("x-request-id")
    );
}

#[tokio::test]
async fn quiet_without_verbose() {
    let server = ScriptedServer::start(vec![
        Reply::status(503).header("retry-after", "0"),
        Reply::status(200),
    ])
    .await;
    let run = kneo(&["request", &server.url("/x")]).await;
    assert_eq!(run.ok()["attempts"], 2);
    assert_eq!(run.stderr, "");
}

#[tokio::test]
async fn hint_over_max_retry_after_ends_retrying() {
    let server = ScriptedServer::start(vec![
        Reply::status(429).header("retry-after", "120"),
        Reply::status(200),
    ])
    .await;
    let out = kneo(&["request", &server.url("/x"), "--max-retry-after", "1"])
        .await
        .failed();
    assert_eq!(out["kind"], "rate_limited");
    assert_eq!(out["attempts"], 1);
    assert_eq!(out["retry_after"], 120.0);
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn no_idempotency_key_stops_a_resend() {
    let script = || vec![Reply::status(502), Reply::status(200)];
    let keyed = ScriptedServer::start(script()).await;
    let out = kneo(&["request", &keyed.url("/x"), "-d", "x"]).await.ok();
    assert_eq!(out["attempts"], 2, "a keyed POST is re-sent after a 502");

    let bare = ScriptedServer::start(script()).await;
    let out = kneo(&[
        "request",
        &bare.url("/x"),
        "-d",
        "x",
        "--no-idempotency-key",
    ])
    .await
    .failed();
    assert_eq!(out["kind"], "server");
    assert_eq!(out["status"], 502);
    assert_eq!(out["attempts"], 1, "an unkeyed POST may have been applied");
    assert_eq!(out["idempotency_key"], Value::Null);
    assert_eq!(bare.requests()[0].header("idempotency-key"), None);
}

#[tokio::test]
async fn per_attempt_timeout() {
    let server =
        ScriptedServer::start(vec![Reply::status(200).delay(Duration::from_secs(5))]).await;
    let started = Instant::now();
    let run = kneo(&[
        "request",
        &server.url("/slow"),
        "--timeout",
        "0.2",
        "--max-attempts",
        "2",
    ])
    .await;
    let elapsed = started.elapsed();
    let out = run.failed();
    assert_eq!(out["kind"], "network");
    assert_eq!(out["code"], "api_timeout");
    assert_eq!(out["status"], Value::Null);
    assert_eq!(out["attempts"], 2, "a timed-out GET is retried");
    // How many attempts got to the server before their time ran out is the
    // machine's business; at least one did.
    kneo_tests::guarded("an attempt reaches the server", async {
        while server.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(server.count() <= 2, "{}", server.count());
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
}

#[tokio::test]
async fn deadline_bounds_everything() {
    let server =
        ScriptedServer::start(vec![Reply::status(200).delay(Duration::from_secs(5))]).await;
    let out = kneo(&["request", &server.url("/slow"), "--deadline", "0.3"])
        .await
        .failed();
    assert_eq!(out["kind"], "network");
    assert_eq!(out["code"], "api_timeout");
    assert_eq!(out["attempts"], 1);
}

#[tokio::test]
async fn connection_refused() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/x");
    let out = kneo(&["request", &url, "--max-attempts", "2"])
        .await
        .failed();
    assert_eq!(out["kind"], "network");
    assert_eq!(out["code"], "api_connection");
    assert_eq!(out["status"], Value::Null);
    assert_eq!(out["body"], Value::Null);
    assert_eq!(out["attempts"], 2, "a refused connect is always retried");
    assert!(out["request_id"].is_string());
}

#[tokio::test]
async fn usage_errors() {
    let server = ScriptedServer::start(vec![Reply::status(200)]).await;
    let url = server.url("/x");
    let missing = std::env::temp_dir().join("kneo-cli-no-such-file");
    let missing = format!("@{}", missing.display());
    let cases: &[&[&str]] = &[
        &[],
        &["request"],
        &["frobnicate", &url],
        &["request", &url, "--bogus"],
        &["request", &url, "-H", "no colon"],
        &["request", &url, "-H", "Bad Name: x"],
        &["request", &url, "-H", "X-Bad: a\u{1}b"],
        &["request", "not a url"],
        &["request", "/relative/path"],
        &["request", "ftp://127.0.0.1/x"],
        &["request", "http://"],
        &["request", &url, "-d", &missing],
        &["request", &url, "--timeout", "0"],
        &["request", &url, "--timeout", "-1"],
        &["request", &url, "--timeout", "NaN"],
        &["request", &url, "--timeout", "soon"],
        &["request", &url, "--deadline", "0"],
        &["request", &url, "--max-retry-after", "-5"],
        &["request", &url, "--max-attempts", "0"],
        &["request", &url, "-X", "GE T"],
    ];
    for args in cases {
        let run = kneo(args).await;
        let line = run.usage();
        assert!(line.len() > "error: ".len() + 5, "{args:?}: {line:?}");
    }
    assert_eq!(server.count(), 0, "a usage error sends nothing");
}

/// What is missing is named, with the usage line; values stay hidden.
#[tokio::test]
async fn usage_errors_say_what_is_missing() {
    let run = kneo(&["proxy"]).await;
    assert_eq!(
        run.usage(),
        "error: the following required arguments were not provided: --upstream <URL>"
    );
    assert!(run.stderr.contains("Usage: kneo proxy"), "{}", run.stderr);
    let run = kneo(&["request"]).await;
    assert_eq!(
        run.usage(),
        "error: the following required arguments were not provided: <URL>"
    );
    assert!(run.stderr.contains("Usage: kneo request"), "{}", run.stderr);
    let run = kneo(&["proxy", "--upstream"]).await;
    assert_eq!(
        run.usage(),
        "error: a value is required for --upstream <URL> but none was supplied"
    );
    assert!(run.stderr.contains("Usage: kneo proxy"), "{}", run.stderr);
    let run = kneo(&["request", "--max-attempts"]).await;
    assert!(run
        .usage()
        .contains("a value is required for --max-attempts"));
    for args in [
        &[
            "request",
            "http://u:hunter2@127.0.0.1:9/",
            "--bogus=hunter3",
        ][..],
        &["proxy", "--upstream", "http://u:hunter2@127.0.0.1:9/"],
        &[
            "request",
            "http://127.0.0.1:9/",
            "-H",
            "Authorization hunter2",
        ],
    ] {
        let run = kneo(args).await;
        run.usage();
        assert!(!run.stderr.contains("hunter"), "{args:?}: {}", run.stderr);
    }
}

#[tokio::test]
async fn help_and_version_succeed_on_stdout() {
    let run = kneo(&["request", "--help"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("--max-retry-after"));
    let run = kneo(&["--version"]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.starts_with("kneo "));
}

#[tokio::test]
async fn not_modified_to_a_conditional_get_succeeds_and_a_redirect_fails() {
    let server = ScriptedServer::start(vec![Reply::status(304).header("etag", "\"v7\"")]).await;
    let out = kneo(&[
        "request",
        &server.url("/repo"),
        "-H",
        "If-None-Match: \"v7\"",
    ])
    .await
    .ok();
    assert_eq!(out["status"], 304);
    assert_eq!(out["body"], Value::Null);

    let server = ScriptedServer::start(vec![Reply::status(302).header("location", "/else")]).await;
    let out = kneo(&["request", &server.url("/repo")]).await.failed();
    assert_eq!(out["kind"], "status");
    assert_eq!(out["status"], 302);
}

#[tokio::test]
async fn output_is_one_line_for_every_unicode_line_break() {
    let body = "tea\u{2028}pot\u{2029}short\u{85}and\nstout";
    let server = ScriptedServer::start(vec![Reply::status(418).body(body)]).await;
    let run = kneo(&["request", &server.url("/x")]).await;
    let out = run.failed();
    // What Python's str.splitlines() splits on, beside \n and \r.
    for brk in [
        '\u{2028}', '\u{2029}', '\u{85}', '\u{b}', '\u{c}', '\u{1c}', '\u{1d}', '\u{1e}',
    ] {
        assert!(!run.stdout.contains(brk), "{brk:?} in {:?}", run.stdout);
    }
    let message = out["message"].as_str().expect("a message");
    assert!(
        !message.contains(['\u{2028}', '\u{2029}', '\u{85}', '\n']),
        "{message:?}"
    );
    assert_eq!(
        out["body"], body,
        "the body itself round-trips through the escapes"
    );
}

#[tokio::test]
async fn no_secret_in_output_logs_or_usage_errors() {
    const SECRET: &str = "hunter2-planted";
    let server = ScriptedServer::start(vec![Reply::status(503), Reply::json(200, "{}")]).await;
    let url = format!(
        "http://alice:{SECRET}@{}/x?api_key=sk-q-{SECRET}",
        server.addr()
    );
    let run = kneo(&["request", &url, "-v", "-H", &format!("X-Api-Key: {SECRET}")]).await;
    let out = run.ok();
    assert_eq!(out["attempts"], 2);
    assert!(
        run.stderr.contains("retrying"),
        "-v logs the retry: {}",
        run.stderr
    );
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(SECRET), "{text}");
    }
    let reqs = server.requests();
    // base64("alice:hunter2-planted"): userinfo is Basic auth, as curl sends it.
    assert_eq!(
        reqs[0].header("authorization").as_deref(),
        Some("Basic YWxpY2U6aHVudGVyMi1wbGFudGVk")
    );

    let cases: &[&[&str]] = &[
        &["request", &format!("ftp://alice:{SECRET}@127.0.0.1/x")],
        &["request", &format!("http://alice:{SECRET}@/x")],
        &[
            "request",
            &server.url("/x"),
            "-H",
            &format!("Authorization Bearer sk-live-{SECRET}"),
        ],
        &[
            "request",
            &server.url("/x"),
            "-H",
            &format!("Authorization Bearer {SECRET}: x"),
        ],
        &[
            "request",
            &server.url("/x"),
            "-H",
            &format!("Authorization: Bearer {SECRET}\u{1}"),
        ],
        &["request", &server.url("/x"), &format!("--bogus={SECRET}")],
        &["request", &server.url("/x"), &format!("extra-{SECRET}")],
        &[&format!("https://alice:{SECRET}@example.com")],
    ];
    for args in cases {
        let run = kneo(args).await;
        let line = run.usage();
        assert!(!line.contains(SECRET), "{args:?}: {line}");
    }
    assert_eq!(server.count(), 2, "usage errors send nothing");
}

#[tokio::test]
async fn the_parsed_rate_limit_is_printed_success_or_failure() {
    let server = ScriptedServer::start(vec![Reply::json(200, "{}")
        .header("x-ratelimit-limit-requests", "60")
        .header("x-ratelimit-remaining-requests", "59")
        .header("x-ratelimit-reset-requests", "1s")
        .header("x-ratelimit-limit-tokens", "1000")
        .header("x-ratelimit-remaining-tokens", "10")
        .header("x-ratelimit-reset-tokens", "6m0s")])
    .await;
    let out = kneo(&["request", &server.url("/x")]).await.ok();
    assert_eq!(
        out["rate_limit"],
        json!({"limit": 1000, "remaining": 10, "reset_after": 360.0, "policy": "tokens"}),
        "the budget nearer exhaustion"
    );

    let server = ScriptedServer::start(vec![Reply::status(429)
        .header("retry-after", "120")
        .header("ratelimit-limit", "100")
        .header("ratelimit-remaining", "0")
        .header("ratelimit-reset", "120")])
    .await;
    let out = kneo(&["request", &server.url("/x"), "--max-retry-after", "1"])
        .await
        .failed();
    assert_eq!(
        out["rate_limit"],
        json!({"limit": 100, "remaining": 0, "reset_after": 120.0, "policy": null})
    );

    let server = ScriptedServer::start(vec![Reply::json(200, "{}")]).await;
    let out = kneo(&["request", &server.url("/x")]).await.ok();
    assert_eq!(out["rate_limit"], Value::Null);
}
