//! One definition of failure: a 304 answering the caller's own conditional
//! request is the answer asked for; every other 3xx is an error.

use http::{Request, StatusCode};
use http_body_util::Full;
use kneo::{Attempts, ErrorKind};
use kneo_tests::{fast, Reply, ScriptedServer};

#[tokio::test]
async fn not_modified_to_a_conditional_get_is_ok() {
    for (name, value) in [
        ("if-none-match", "\"v7\""),
        ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ] {
        let server = ScriptedServer::start(vec![Reply::status(304).header("etag", "\"v7\"")]).await;
        let res = server
            .client(fast())
            .request(
                Request::get("/repos/7")
                    .header(name, value)
                    .body(Full::default())
                    .expect("valid"),
            )
            .await
            .expect("a 304 to a conditional GET is not an error");
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{name}");
        assert_eq!(
            res.extensions().get::<Attempts>().map(Attempts::count),
            Some(1)
        );
        assert_eq!(server.count(), 1);
    }
}

#[tokio::test]
async fn not_modified_without_a_condition_and_redirects_are_errors() {
    let cases = [
        (304, false),
        (302, false),
        (302, true),
        (301, true),
        (307, false),
    ];
    for (status, conditional) in cases {
        let server =
            ScriptedServer::start(vec![Reply::status(status).header("location", "/elsewhere")])
                .await;
        let mut req = Request::get("/x");
        if conditional {
            req = req.header("if-none-match", "\"v1\"");
        }
        let err = server
            .client(fast())
            .request(req.body(Full::default()).expect("valid"))
            .await
            .expect_err("not the answer asked for");
        assert_eq!(err.kind(), ErrorKind::Status, "{status}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(err.attempts(), 1, "a 3xx is never retried");
    }
}
