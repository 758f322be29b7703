//! `Client::get_json` / `post_json` when a success body breaks off: a
//! replay-safe request (idempotent, or with the key kneo stamped) is sent
//! again with the same key, at most twice; a POST without a key never is.
//!
//! The server is a raw TCP listener on `127.0.0.1:0`, scripted per
//! connection, so a `201` can promise a body it does not finish.

use std::sync::{Arc, Mutex};

use kneo::idempotency::IdempotencyKeyLayer;
use kneo::ErrorKind;
use kneo_tests::fast;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived: the request line and its `Idempotency-Key`.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    key: Option<String>,
}

/// Answers connection `n` (0-based) with a `201` whose JSON body is cut in
/// half when `n < broken`, whole otherwise; one request per connection.
async fn server(broken: usize) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move { answer(stream, n < broken, &log).await });
        }
    });
    (base, seen)
}

async fn answer(mut stream: TcpStream, broken: bool, log: &Mutex<Vec<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().expect("not poisoned").push(Seen {
        line: head.lines().next().unwrap_or_default().to_owned(),
        key: header("idempotency-key"),
    });
    let body = br#"{"id":"ch_1","amount":100}"#;
    let head = format!(
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let sent = if broken {
        &body[..body.len() / 2]
    } else {
        &body[..]
    };
    let _ = stream.write_all(sent).await;
    let _ = stream.shutdown().await;
}

fn client(base: &str, layer: kneo::ClientLayer) -> kneo::Client {
    kneo::Client::builder()
        .base_url(base)
        .layer(layer)
        .build()
        .expect("client builds")
}

#[tokio::test]
async fn a_keyed_post_whose_body_broke_is_sent_again_with_its_key() {
    let (base, seen) = server(1).await;
    let charge: serde_json::Value = client(&base, fast())
        .post_json("/charges", &serde_json::json!({"amount": 100}))
        .await
        .expect("the resend got the whole body");
    assert_eq!(charge["id"], "ch_1");
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.line.starts_with("POST /charges")));
    let key = seen[0].key.clone().expect("kneo stamped a key");
    assert_eq!(seen[1].key.as_deref(), Some(key.as_str()), "the same key");
}

#[tokio::test]
async fn a_get_whose_body_broke_is_fetched_again() {
    let (base, seen) = server(1).await;
    let charge: serde_json::Value = client(&base, fast())
        .get_json("/charges/ch_1")
        .await
        .expect("fetched again");
    assert_eq!(charge["amount"], 100);
    assert_eq!(seen.lock().expect("not poisoned").len(), 2);
}

#[tokio::test]
async fn resends_stop_after_two() {
    let (base, seen) = server(usize::MAX).await;
    let err = client(&base, fast())
        .post_json::<_, serde_json::Value>("/charges", &serde_json::json!({"amount": 100}))
        .await
        .expect_err("every body breaks");
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    assert!(err.is_replay_safe(), "it carries its key: {err}");
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 3, "the first and two resends: {seen:?}");
    assert_eq!(err.idempotency_key(), seen[0].key.as_deref());
}

#[tokio::test]
async fn a_post_without_a_key_is_never_sent_again() {
    let (base, seen) = server(1).await;
    let layer = fast().idempotency(IdempotencyKeyLayer::new().methods([]));
    let err = client(&base, layer)
        .post_json::<_, serde_json::Value>("/charges", &serde_json::json!({"amount": 100}))
        .await
        .expect_err("the body broke");
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    assert!(!err.is_replay_safe(), "it may have been applied: {err}");
    assert_eq!(seen.lock().expect("not poisoned").len(), 1, "sent once");
}
