//! What kneo-server's benches share: the request every scenario sends.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// A keyed POST of a payment, with a caller's credential, to `url`.
pub(crate) fn payment(url: &str, key: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("idempotency-key", key)
        .header("authorization", "Bearer sk_bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"amount":1200,"currency":"eur"}"#,
        )))
        .expect("valid request")
}
