//! Id generation: random UUID v4s made straight into header values, for
//! request ids and idempotency keys alike.

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// The default id generator: a random UUID v4, hyphenated.
///
/// It makes the header value in one allocation where tower-http's
/// `MakeRequestUuid` takes three (measured in `benches/overhead.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUuidV4;

impl MakeRequestId for MakeUuidV4 {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(uuid_v4_header()))
    }
}

/// A random UUID v4 as a header value, in one allocation: formatted on the
/// stack, then owned by `Bytes`, so clones only bump a reference count.
pub(crate) fn uuid_v4_header() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("invariant: a hyphenated UUID is a valid header value")
}
