//! Path hygiene through the built `kneo proxy`: whatever a caller writes,
//! nothing reaches the upstream outside the prefix it was given
//! (`--upstream http://…/api`). Requests are written byte for byte on a raw
//! socket, since HTTP clients clean paths themselves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kneo_tests::sidecar::Sidecar;
use kneo_tests::{Reply, ScriptedServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `target` with `method` and returns the status line's code.
async fn raw(proxy: &Sidecar, method: &str, target: &str) -> u16 {
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let read = async {
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no hang");
    let head = String::from_utf8_lossy(&response);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status line in {head:?}"))
}

#[tokio::test]
async fn nothing_reaches_the_upstream_outside_its_prefix() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let seen = seen.clone();
        ScriptedServer::with(move |_, req| {
            seen.lock().expect("lock").push(req.uri.to_string());
            Reply::status(200)
        })
        .await
    };
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let proxy = Sidecar::start(kneo, &upstream.url("/api"), &[])
        .await
        .expect("starts");

    // Forwarded, cleaned: (target, what the upstream sees).
    let forwarded = [
        ("/runs/7?x=1", "/api/runs/7?x=1"),
        ("/a/./b", "/api/a/b"),
        ("/a//b", "/api/a/b"),
        ("/a/b/../c", "/api/a/c"),
        ("/a/%2e%2e/b", "/api/b"),
        ("/a/..;x/b", "/api/b"),
        ("/a;v=1/b", "/api/a;v=1/b"),
        ("http://localhost/abs/./olute", "/api/abs/olute"),
    ];
    for (target, want) in forwarded {
        assert_eq!(raw(&proxy, "GET", target).await, 200, "{target}");
        let got = seen.lock().expect("lock").pop();
        assert_eq!(got.as_deref(), Some(want), "{target}");
    }

    // Refused with 400 (or 405), never forwarded.
    let refused = [
        ("GET", "/../admin", 400),
        ("GET", "/%2e%2e/admin", 400),
        ("GET", "/%2E%2e/admin", 400),
        ("GET", "/a/../../admin", 400),
        ("GET", "/.%2e/admin", 400),
        ("GET", "/..;/admin", 400),
        ("GET", "//../admin", 400),
        ("GET", "/a/..%2fadmin", 400),
        ("GET", "/a%2f..%2f..%2fadmin", 400),
        ("GET", "/a/%5c../admin", 400),
        ("GET", "admin", 400),
        ("CONNECT", "example.com:22", 405),
    ];
    for (method, target, status) in refused {
        assert_eq!(
            raw(&proxy, method, target).await,
            status,
            "{method} {target}"
        );
    }
    assert!(
        seen.lock().expect("lock").is_empty(),
        "nothing refused reached the upstream: {:?}",
        seen.lock().expect("lock")
    );
}
