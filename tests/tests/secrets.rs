//! Credentials never leak: not through `Debug`, `Display`, a log line, nor a
//! URL's userinfo or query string; userinfo is sent as Basic auth, as curl does.

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::Request;
use http_body_util::Full;
use kneo_tests::{fast, Reply, ScriptedServer};

const PASSWORD: &str = "hunter2-planted";
const QUERY_KEY: &str = "sk-query-planted";

/// `base64("alice:hunter2-planted")`.
const BASIC: &str = "Basic YWxpY2U6aHVudGVyMi1wbGFudGVk";

fn assert_clean(what: &str, text: &str) {
    for secret in [PASSWORD, QUERY_KEY, BASIC, "YWxpY2U6"] {
        assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
    }
}

/// Everything logged while the guard lives, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn userinfo_in_a_base_url_is_basic_auth_and_never_printed() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::json(404, r#"{"error":{"message":"no such run"}}"#),
    ])
    .await;
    let base = format!("http://alice:{PASSWORD}@{}", server.addr());
    let builder = kneo::Client::builder().base_url(&base).layer(fast());
    assert_clean("ClientBuilder Debug", &format!("{builder:?}"));
    let client = builder.build().expect("userinfo is accepted");
    assert_clean("Client Debug", &format!("{client:?}"));

    let err = client
        .request(
            Request::get(format!("/runs/9?api_key={QUERY_KEY}"))
                .body(Full::default())
                .expect("valid"),
        )
        .await
        .expect_err("404 after a retried 503");
    assert_eq!(err.attempts(), 2);
    assert_clean("Error Display", &err.to_string());
    assert_clean("Error Debug", &format!("{err:?}"));

    let reqs = server.requests();
    for r in &reqs {
        assert_eq!(r.header("authorization").as_deref(), Some(BASIC));
        assert_eq!(r.header("host"), Some(server.addr().to_string()));
    }
    let logged = logs.text();
    assert!(
        logged.contains("retrying"),
        "the retry was logged: {logged}"
    );
    assert_clean("logs", &logged);
}

#[tokio::test]
async fn userinfo_in_an_absolute_url_is_basic_auth_unless_the_request_has_its_own() {
    let server = ScriptedServer::start(vec![Reply::status(200)]).await;
    let client = kneo::Client::builder()
        .layer(fast())
        .build()
        .expect("builds");
    let url = format!("http://alice:{PASSWORD}@{}/x", server.addr());
    client
        .request(Request::get(&url).body(Full::default()).expect("valid"))
        .await
        .expect("200");
    client
        .request(
            Request::get(&url)
                .header("authorization", "Bearer own")
                .body(Full::default())
                .expect("valid"),
        )
        .await
        .expect("200");
    let reqs = server.requests();
    assert_eq!(reqs[0].header("authorization").as_deref(), Some(BASIC));
    assert_eq!(
        reqs[1].header("authorization").as_deref(),
        Some("Bearer own")
    );
    assert_eq!(reqs[0].uri.path(), "/x");
}

#[tokio::test]
async fn a_query_key_never_reaches_an_error() {
    let client = kneo::Client::builder()
        .layer(fast())
        .build()
        .expect("builds");
    let err = client
        .get_json::<serde_json::Value>(&format!("/v1/runs?api_key={QUERY_KEY}"))
        .await
        .expect_err("relative, no base URL");
    assert_eq!(err.kind(), kneo::ErrorKind::Request);
    assert!(err.to_string().contains("/v1/runs"), "{err}");
    assert_clean("Display", &err.to_string());
    assert_clean("Debug", &format!("{err:?}"));

    let err = kneo::Client::builder()
        .base_url(format!("alice:{PASSWORD}@no-scheme?api_key={QUERY_KEY}"))
        .build()
        .expect_err("no scheme");
    assert_clean("Display", &err.to_string());
    assert_clean("Debug", &format!("{err:?}"));
}
