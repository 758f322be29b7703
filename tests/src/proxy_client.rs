//! A caller of `kneo proxy` (or of any loopback HTTP/1.1 server): a request
//! sent, the whole answer read, as [`Got`]; and the keyed `POST /charges`
//! the idempotency tests send.
//!
//! ```no_run
//! # async fn demo(proxy: &kneo_tests::sidecar::Sidecar) {
//! use kneo_tests::proxy_client::post_charge;
//!
//! let first = post_charge(proxy.addr(), "pay-1").await;
//! let again = post_charge(proxy.addr(), "pay-1").await;
//! assert!(again.replayed() && again.body == first.body);
//! # }
//! ```

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::guarded;

/// What the caller got: the whole answer.
#[derive(Debug, Clone)]
pub struct Got {
    /// The status.
    pub status: StatusCode,
    /// Every header.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Got {
    /// A header as text, if present (and visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether it is a replay (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// Asserts a problem answer of `status` with `code`: its content type,
    /// its members, its `X-Request-ID` the body's `request_id`. The body.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        assert_eq!(p["code"], code, "{p}");
        for member in ["type", "title", "detail", "kind"] {
            assert!(p[member].is_string(), "{member} in {p}");
        }
        assert!(p["attempts"].is_u64(), "{p}");
        let id = p["request_id"].as_str().expect("a request id");
        assert_eq!(self.header("x-request-id"), Some(id));
        p
    }
}

/// A pooling HTTP/1.1 client, for a test that wants its connections kept.
pub type Caller = Client<HttpConnector, Full<Bytes>>;

/// A new [`Caller`].
pub fn caller() -> Caller {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `req` (an absolute URL) sent by a caller of its own: the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> Got {
    send_with(&caller(), req).await
}

/// `req` sent by `client`: the whole answer. Panics on a transport error,
/// or after [`GUARD`](crate::GUARD) for the head or the body.
pub async fn send_with(client: &Caller, req: Request<Full<Bytes>>) -> Got {
    let res = guarded("the response", client.request(req))
        .await
        .expect("the proxy answers");
    let (parts, body) = res.into_parts();
    let body = guarded("the body", body.collect())
        .await
        .expect("the whole body")
        .to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// An HTTP/1.1 connection of its own to `addr`, its connection task
/// spawned: requests on it carry an origin-form target and a `Host`.
pub async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// `POST path` with `Host: localhost` and `Idempotency-Key: key`, for a
/// test to finish.
pub fn keyed_post(path: &str, key: &str) -> http::request::Builder {
    Request::post(path)
        .header("host", "localhost")
        .header("idempotency-key", key)
}

/// The keyed charge: `POST /charges` of `{"amount":10}` (JSON) under `key`.
pub fn charge(key: &str) -> Request<Full<Bytes>> {
    keyed_post("/charges", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"amount":10}"#)))
        .expect("valid")
}

/// The keyed [`charge`] sent to `addr` on a fresh connection: the whole
/// answer.
pub async fn post_charge(addr: SocketAddr, key: &str) -> Got {
    guarded("a keyed POST through the proxy", async {
        let mut sender = connect(addr).await;
        let res = sender.send_request(charge(key)).await.expect("an answer");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("a whole body").to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
}
